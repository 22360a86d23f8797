"""Shift features from a PaliGemma: vision, question and joint embeddings (paper App. 7.3).

For every record the model reads its usual prompt (image tokens, then BOS + ``answer en
{question}`` + newline, as :class:`~transformers.PaliGemmaProcessor` lays it out) and three
embeddings are taken from the **final layer** (after the final norm, i.e. what the language
model head sees), mean-pooled:

* ``vision``: the image-token positions, with the question **masked out**;
* ``question``: the question-token positions, with the image **masked out**;
* ``joint``: both modalities visible; the mean of the image-token mean and the question-token
  mean (each modality weighs the same whatever its token count).

Masking mechanism: the masked modality's positions get ``attention_mask = 0``, so no query
attends to them in any layer (they are removed as keys; their own outputs are never pooled).
Everything else is unchanged: the same input layout, positions and weights. The prompt is
PaliGemma's prefix (``token_type_ids = 0``, attended bidirectionally, as in generation); when the
encoding has no ``token_type_ids`` they are set to zeros so the semantics do not depend on
the attention backend. Because Gemma's rotary positions are relative, this equals running the
model on the kept modality alone (``tests/test_features.py`` checks that against separate
single-modality forward passes). The vision tower runs once per batch (its output is shared by
the vision and joint passes) and not at all for the question pass, whose image positions are
masked anyway.

"Question tokens" are the attended text positions that are not image tokens and not the
tokenizer's BOS / EOS / PAD (BOS is an attention sink whose state barely depends on the input);
the ``answer en`` task prefix and the trailing newline are included.

Features are float32 numpy arrays ``(n, hidden_size)``. :func:`extract_features` streams them
batch by batch into a disk cache keyed by the model's weights, the records and the settings,
as memory-mapped ``.npy`` files: a large training split never has to fit in memory, an
interrupted extraction resumes, and a second call with the same model and split reads the
cache instead of running the model.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.records import VQARecord
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, read_json

FEATURE_KINDS = ("vision", "question", "joint")
FEATURES_VERSION = "1"  # bump when the extraction changes what a cached feature means
DEFAULT_PROMPT = "answer en {question}"

Encoder = Callable[[Sequence[VQARecord]], Mapping[str, torch.Tensor]]

__all__ = [
    "DEFAULT_PROMPT",
    "FEATURE_KINDS",
    "FeatureSet",
    "extract_features",
    "iter_feature_batches",
    "model_fingerprint",
    "pooled_features",
    "processor_encoder",
    "records_fingerprint",
]


# ----------------------------------------------------------------------------- encoding
def processor_encoder(processor, prompt: str = DEFAULT_PROMPT) -> Encoder:
    """Records → model inputs through a PaliGemma processor (images loaded from disk here)."""

    image_token = getattr(processor, "image_token", "<image>")

    def encode(records: Sequence[VQARecord]) -> Mapping[str, torch.Tensor]:
        images = [r.load_image() for r in records]
        texts = [image_token + prompt.format(question=r.question) for r in records]
        enc = processor(text=texts, images=images, return_tensors="pt", padding="longest")
        return {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "token_type_ids") if k in enc}

    return encode


def special_token_ids(model, processor=None) -> set[int]:
    """BOS / EOS / PAD ids from the tokenizer (or the model's text config)."""
    ids: set[int] = set()
    tok = getattr(processor, "tokenizer", None)
    sources = [tok] if tok is not None else []
    cfg = getattr(model, "config", None)
    if cfg is not None:
        sources.append(cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg)
    for src in sources:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(src, name, None)
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
    return ids


# ----------------------------------------------------------------------------- forward
def _backbone(model):
    """The PaliGemmaModel inside ``model`` (also through peft wrappers), or None."""
    for m in model.modules():
        if type(m).__name__ == "PaliGemmaModel":
            return m
    return None


def _final_states(model, backbone, **inputs) -> torch.Tensor:
    if backbone is not None:  # no LM head: no (batch x length x vocab) logits
        return backbone(**inputs, use_cache=False).last_hidden_state
    out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.float32).unsqueeze(-1)
    return (h.float() * m).sum(1) / m.sum(1)


@torch.no_grad()
def pooled_features(
    model,
    inputs: Mapping[str, torch.Tensor],
    *,
    image_token_id: Optional[int] = None,
    special_ids: Iterable[int] = (),
    kinds: Sequence[str] = FEATURE_KINDS,
) -> dict[str, torch.Tensor]:
    """One batch: ``{kind: (batch, hidden) float32}`` from encoded inputs (see the module doc)."""
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad:
        raise ConfigError(f"unknown feature kind(s) {bad}; known: {', '.join(FEATURE_KINDS)}")
    if image_token_id is None:
        image_token_id = int(model.config.image_token_id)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    ids = inputs["input_ids"].to(device)
    attn = inputs.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else attn.to(device)
    tti = inputs.get("token_type_ids")
    tti = torch.zeros_like(ids) if tti is None else tti.to(device)
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        raise DataError("inputs have no pixel_values: shift features need the image")
    pixel_values = pixel_values.to(device, dtype)

    valid = attn.bool()
    is_image = valid & (ids == image_token_id)
    is_text = valid & (ids != image_token_id)
    special = torch.tensor(sorted(set(special_ids) - {image_token_id}), dtype=ids.dtype, device=device)
    is_question = is_text & ~torch.isin(ids, special) if special.numel() else is_text
    if not bool(is_image.any(1).all()):
        raise DataError(f"a sequence has no image tokens (id {image_token_id}): is this a PaliGemma encoding?")
    if not bool(is_question.any(1).all()):
        raise DataError("a sequence has no question tokens")

    backbone = _backbone(model)
    if backbone is not None and "mm_encoder_outputs" in inspect.signature(backbone.forward).parameters:
        image_outputs = backbone.get_image_features(pixel_values)  # the vision tower runs once per batch

        def image_inputs() -> dict:
            return {"mm_encoder_outputs": {"image": image_outputs}}
    else:

        def image_inputs() -> dict:
            return {"pixel_values": pixel_values}

    out: dict[str, torch.Tensor] = {}
    if "vision" in kinds:
        h = _final_states(model, backbone, input_ids=ids, attention_mask=is_image.long(), token_type_ids=tti, **image_inputs())
        out["vision"] = _masked_mean(h, is_image)
    if "question" in kinds:
        # the image positions are masked, so no image is needed (the placeholders stay token embeddings)
        h = _final_states(model, backbone, input_ids=ids, attention_mask=is_text.long(), token_type_ids=tti)
        out["question"] = _masked_mean(h, is_question)
    if "joint" in kinds:
        h = _final_states(model, backbone, input_ids=ids, attention_mask=attn, token_type_ids=tti, **image_inputs())
        out["joint"] = 0.5 * (_masked_mean(h, is_image) + _masked_mean(h, is_question))
    for k, v in out.items():
        if not torch.isfinite(v).all():
            raise DataError(f"non-finite {k} features (model dtype {dtype}); try --dtype float32")
    return out


def iter_feature_batches(
    model,
    records: Sequence[VQARecord],
    *,
    encode: Encoder,
    batch_size: int = 16,
    kinds: Sequence[str] = FEATURE_KINDS,
    image_token_id: Optional[int] = None,
    special_ids: Iterable[int] = (),
    start: int = 0,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(first_row, {kind: float32 array})`` for consecutive batches of ``records``."""
    was_training = model.training
    model.eval()
    special_ids = set(special_ids)
    try:
        for i in range(start, len(records), batch_size):
            batch = records[i : i + batch_size]
            feats = pooled_features(model, encode(batch), image_token_id=image_token_id, special_ids=special_ids, kinds=kinds)
            yield i, {k: v.cpu().numpy().astype(np.float32, copy=False) for k, v in feats.items()}
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- identity
def model_fingerprint(model) -> str:
    """A content hash of the weights (names, shapes, dtypes, sums and strided samples) and config.

    Cheap enough for a 3B model (one reduction per tensor); any fine-tuning step changes it.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    h.update(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            t = p.detach()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if t.numel() == 0 or not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
                continue
            flat = t.reshape(-1)
            step = max(1, flat.numel() // 16)
            stats = torch.stack([flat.double().sum(), flat.double().abs().sum()]).cpu().numpy()
            sample = flat[::step][:16].double().cpu().numpy()
            h.update(stats.tobytes())
            h.update(sample.tobytes())
    return h.hexdigest()


def records_fingerprint(records: Sequence[VQARecord]) -> str:
    """Hash of the records' ids, questions and image references, in order."""
    h = hashlib.sha256()
    for r in records:
        if isinstance(r.image, (str, Path)):
            img = str(r.image)
        else:  # an in-memory PIL image
            img = hashlib.sha1(r.image.tobytes()).hexdigest() + f"{r.image.size}{r.image.mode}"
        h.update(json.dumps([r.question_id, r.question, img]).encode())
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- cache
@dataclass
class FeatureSet:
    """Features of one split: ``arrays[kind]`` is ``(n, hidden)`` float32 (memory-mapped from a cache)."""

    question_ids: list[str]
    arrays: dict[str, np.ndarray]
    key: str
    path: Optional[Path] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.question_ids)

    def chunks(self, kind: str, rows: int = 8192) -> Iterator[np.ndarray]:
        """The ``kind`` features in row chunks (a memory-mapped file is read chunk by chunk)."""
        arr = self.arrays[kind]
        for i in range(0, arr.shape[0], rows):
            yield np.asarray(arr[i : i + rows])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "split"


def features_key(model_fp: str, records_fp: str, *, prompt: str, kinds: Sequence[str], extra: Mapping[str, Any] | None = None) -> str:
    payload = {
        "version": FEATURES_VERSION,
        "model": model_fp,
        "records": records_fp,
        "prompt": prompt,
        "kinds": sorted(kinds),
        **dict(extra or {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def extract_features(
    model,
    processor,
    records: Sequence[VQARecord],
    *,
    split: str = "split",
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    kinds: Sequence[str] = FEATURE_KINDS,
    prompt: str = DEFAULT_PROMPT,
    encode: Optional[Encoder] = None,
    model_fp: Optional[str] = None,
    progress: Optional[Callable[[int], None]] = None,
    checkpoint_rows: int = 4096,
) -> FeatureSet:
    """Features of ``records`` (any PaliGemma: tiny or 3B, plain or peft-wrapped).

    ``processor`` is a PaliGemma processor (or None when ``encode`` is given, e.g. in tests with
    hand-made token ids). With ``cache_dir`` the features are written to
    ``cache_dir/<model hash>/<split>-<key>/{kind}.npy`` and memory-mapped back; the key covers
    the weights, the records, the prompt and the kinds, so a cache is reused only for the same
    features. Progress is checkpointed every ``checkpoint_rows`` rows, and a later call with
    the same key resumes from there. ``progress(n_rows_done)`` is called after every batch.
    """
    kinds = tuple(kinds)
    if not records:
        raise DataError(f"split {split!r} has no records to extract features from")
    if encode is None:
        if processor is None:
            raise ConfigError("extract_features needs a processor or an encode function")
        encode = processor_encoder(processor, prompt)
    image_token_id = int(model.config.image_token_id)
    special = special_token_ids(model, processor)
    model_fp = model_fp or model_fingerprint(model)
    key = features_key(model_fp, records_fingerprint(records), prompt=prompt, kinds=kinds)
    qids = [r.question_id for r in records]

    if cache_dir is None:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for i, feats in iter_feature_batches(model, records, encode=encode, batch_size=batch_size, kinds=kinds,
                                             image_token_id=image_token_id, special_ids=special):
            for k in kinds:
                parts[k].append(feats[k])
            if progress:
                progress(min(len(records), i + batch_size))
        return FeatureSet(qids, {k: np.concatenate(v) for k, v in parts.items()}, key)

    folder = Path(cache_dir) / model_fp[:16] / f"{_safe(split)}-{key[:16]}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        if meta.get("key") == key and meta.get("complete"):
            fs = _open_cached(folder, meta, kinds)
            if progress:
                progress(len(fs))
            return fs
    folder.mkdir(parents=True, exist_ok=True)

    # resume a partial extraction with the same key, else start afresh
    progress_path = folder / "progress.json"
    done = 0
    state = read_json(progress_path) if progress_path.is_file() else {}
    arrays: dict[str, np.ndarray] = {}
    if state.get("key") == key and all((folder / f"{k}.npy").is_file() for k in kinds):
        done = int(state.get("rows_done", 0))
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r+") for k in kinds}
    if progress and done:
        progress(done)

    rows_since_flush = 0
    for i, feats in iter_feature_batches(model, records, encode=encode, batch_size=batch_size, kinds=kinds,
                                         image_token_id=image_token_id, special_ids=special, start=done):
        if not arrays:
            for k in kinds:
                arrays[k] = np.lib.format.open_memmap(folder / f"{k}.npy", mode="w+", dtype=np.float32,
                                                      shape=(len(records), feats[k].shape[1]))
        j = i + len(feats[kinds[0]])
        for k in kinds:
            arrays[k][i:j] = feats[k]
        done = j
        rows_since_flush += j - i
        if rows_since_flush >= checkpoint_rows or done == len(records):  # checkpoint for resume
            for a in arrays.values():
                a.flush()
            atomic_write_json(progress_path, {"key": key, "rows_done": done})
            rows_since_flush = 0
        if progress:
            progress(done)
    for a in arrays.values():
        a.flush()
    atomic_write_json(folder / "question_ids.json", qids, indent=None)
    meta = {
        "key": key,
        "complete": True,
        "split": split,
        "n": len(records),
        "kinds": list(kinds),
        "hidden_size": int(next(iter(arrays.values())).shape[1]),
        "model_fingerprint": model_fp,
        "prompt": prompt,
        "version": FEATURES_VERSION,
    }
    atomic_write_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    del arrays
    return _open_cached(folder, meta, kinds)


def _open_cached(folder: Path, meta: dict, kinds: Sequence[str]) -> FeatureSet:
    missing = [k for k in kinds if k not in meta.get("kinds", [])]
    if missing:
        raise DataError(f"feature cache lacks kinds {missing}", path=folder)
    qids = read_json(folder / "question_ids.json")
    arrays = {}
    for k in kinds:
        try:
            arrays[k] = np.load(folder / f"{k}.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable cached features ({exc})", path=folder / f"{k}.npy") from None
        if arrays[k].shape[0] != len(qids):
            raise DataError("cached features and question ids disagree in length", path=folder)
    return FeatureSet(list(qids), arrays, meta["key"], folder, meta)
