"""DomainNet as VQA (DomainNet-oVQA): six image domains, 345 classes, one question.

Files (as released, per domain)::

    DIR/domainnet/{domain}_{train,test}.txt    lines "real/aircraft_carrier/real_001_000001.jpg 0"
    DIR/domainnet/{domain}/{class}/*.jpg

for the domains clipart, infograph, painting, quickdraw, real and sketch. Class ids are the
alphabetical index of the 345 class names. As VQA (the paper, after Ging et al. 2024) every
image gets the question "What is in the image?" and its class name with ``_`` → space as the
answer; the line's path is the record's ``question_id`` (unique within a split) and ``meta``
keeps ``label``, ``class_name`` and ``domain``. Each domain is registered on its own
(``domainnet-real`` is ID; the other five are near-OOD vision shifts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import ConfigError, DataError
from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, check_choice, dataset_dir, is_empty_question

SUBDIR = "domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
QUESTION = "What is in the image?"


def class_answer(class_name: str) -> str:
    return class_name.replace("_", " ")


def _read_lines(ctx: LoadContext, path: Path) -> list[str]:
    try:
        with open(ctx.add_file(path), encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", path=path) from None


def _load_domain(
    name: str, domain: str, root: Path | None, split: str, subdir: str, question: str, source: str,
    hub_id: str | None, hub_revision: str | None, common: dict[str, Any],
) -> Iterator[VQARecord]:
    check_choice(name, "split", split, ("train", "test"))
    if not isinstance(question, str) or is_empty_question(question):
        raise ConfigError(f"dataset {name!r}: question must be a non-empty string, got {question!r}")
    ctx = LoadContext.from_options(name, split, common)
    if hub.wants_hub(name, source):
        return _from_hub(ctx, domain, split, question, hub_id, hub_revision)
    fname = f"{domain}_{split}.txt"
    d = dataset_dir(root, name, subdir, fname)
    root = require_root(root, name)
    path = d / fname
    lines = _read_lines(ctx, path)

    def gen() -> Iterator[VQARecord | None]:
        labels: dict[int, str] = {}
        seen: set[str] = set()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                ctx.malformed(path, where, f"expected 'PATH LABEL', got {line!r}")
                continue
            rel, label_text = parts[0].strip(), int(parts[1])
            comps = rel.replace("\\", "/").split("/")
            if len(comps) < 3 or label_text < 0:
                ctx.malformed(path, where, f"expected 'DOMAIN/CLASS/FILE.jpg LABEL' with LABEL >= 0, got {line!r}")
                continue
            if rel in seen:
                ctx.malformed(path, rel, "image listed twice")
                continue
            seen.add(rel)
            class_name = comps[1]
            known = labels.setdefault(label_text, class_name)
            if known != class_name:
                ctx.malformed(path, rel, f"label {label_text} is class {known!r} elsewhere in the file, here {class_name!r}")
                continue
            image = ctx.image(root, d, rel, source=path, record=rel)
            if image is None:
                continue
            meta = {"label": label_text, "class_name": class_name, "domain": domain}
            yield ctx.make(path, rel, image=image, question=question, answers=[class_answer(class_name)], meta=meta)
        lines.clear()

    return ctx.stream(gen())


def _from_hub(
    ctx: LoadContext, domain: str, split: str, question: str, hub_id: str | None, revision: str | None
) -> Iterator[VQARecord]:
    hid, hsplit = hub.hub_source("domainnet", split, hub_id)
    data = hub.load_hub_rows(hid, hsplit, revision=revision)
    features = getattr(data, "features", {}) or {}

    def names(col: str) -> list[str] | None:
        feat = features.get(col) if hasattr(features, "get") else None
        return list(getattr(feat, "names", []) or []) or None

    label_names, domain_names = names("label"), names("domain")

    def rows() -> Iterator[dict[str, Any]]:
        # rows of the other domains are not malformed: they are simply not this dataset
        for row in data:
            dom = row.get("domain")
            if domain_names is not None and isinstance(dom, int) and 0 <= dom < len(domain_names):
                dom = domain_names[dom]
            if dom == domain:
                yield row

    def convert(row: dict[str, Any], i: int) -> dict[str, Any] | None:
        label = row.get("label")
        if row.get("image") is None or isinstance(label, bool) or not isinstance(label, int):
            return None
        cls = label_names[label] if label_names and 0 <= label < len(label_names) else str(label)
        return {
            "question_id": f"{domain}/{split}/{i}",
            "image": row["image"],
            "question": question,
            "answers": [class_answer(cls)],
            "meta": {"label": label, "class_name": cls, "domain": domain},
        }

    return hub.hub_records(ctx, hid, hsplit, convert, rows=rows())


def _register(domain: str) -> None:
    name = f"domainnet-{domain}"
    is_id = domain == "real"

    def loader(
        root: Path | None,
        *,
        split: str = "test",
        subdir: str = SUBDIR,
        question: str = QUESTION,
        source: str = "files",
        hub_id: str | None = None,
        hub_revision: str | None = None,
        **common: Any,
    ) -> Iterator[VQARecord]:
        return _load_domain(name, domain, root, split, subdir, question, source, hub_id, hub_revision, common)

    loader.__name__ = f"load_domainnet_{domain}"
    loader.__doc__ = f"DomainNet {domain} ({'ID' if is_id else 'OOD'}) as VQA: {QUESTION!r} → class name."
    register_dataset(
        name,
        role="id" if is_id else "near",
        shift_type="none" if is_id else "vision",
        description=f"DomainNet-oVQA, {domain} domain: '{QUESTION}' answered with the class name (345 classes).",
        expected_files=[f"{SUBDIR}/{domain}_train.txt", f"{SUBDIR}/{domain}_test.txt", f"{SUBDIR}/{domain}/"],
        licence="research and educational use only (DomainNet terms)",
        source="http://ai.bu.edu/M3SDA/",
    )(loader)


for _domain in DOMAINS:
    _register(_domain)
