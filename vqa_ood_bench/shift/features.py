"""Shift features from a vision-language model: vision, question and joint embeddings (paper App. 7.3).

For every record the model reads its usual prompt in its family's layout (for PaliGemma: image
tokens, then BOS + ``answer en {question}`` + newline; see :mod:`vqa_ood_bench.models.families`)
and three embeddings are taken from the **final layer** (after the final norm, i.e. what the
language model head sees), mean-pooled:

* ``vision``: the image-token positions, with the question **masked out**;
* ``question``: the question-token positions, with the image **masked out**;
* ``joint``: both modalities visible; the mean of the image-token mean and the question-token
  mean (each modality weighs the same whatever its token count).

Masking semantics: the masked modality is invisible to every query in every layer; everything
else is unchanged (the same weights, the same prompt; for PaliGemma the prompt as its prefix,
``token_type_ids = 0``, attended bidirectionally as in generation). Because rotary positions are
relative, this equals running the model on the kept modality alone (``tests/test_features.py``
checks that against separate single-modality forward passes), and that is how it is computed:

* one vision-tower pass per batch, on the batch's distinct images only;
* the ``vision`` pass runs the decoder on the image tokens alone, once per distinct image
  (identical pixel values) of the split;
* the ``question`` pass runs the decoder on the attended text tokens alone, once per distinct
  token sequence of the split (the embedded training split has 107 distinct questions);
* the ``joint`` pass runs the whole prompt of every record, reusing the batch's image encodings.

All kinds come from one extraction (one sweep over the records, one encoding per batch).
Records are processed grouped by image file so that a batch shares images; the features are
returned in the records' order. :func:`pooled_features_masked` is the former formulation (three
full-length passes with attention masks), kept as the reference the tests compare against and as
the fallback for a model without a separable vision tower.

"Question tokens" are the attended text positions that are not image tokens, not the
tokenizer's BOS / EOS / PAD (BOS is an attention sink whose state barely depends on the input)
and not the family's structural tokens (e.g. the markers Idefics3 puts around an image); the
prompt template's words (PaliGemma's ``answer en`` task prefix, its trailing newline) are included.

Features are float32 numpy arrays ``(n, hidden_size)``. :func:`extract_features` streams them
batch by batch into a disk cache keyed by the model's weights, the records and the settings, as
``.npy`` files (never pickles): a large split never has to fit in memory, an interrupted
extraction resumes, and a second call with the same model and records reads the cache instead of
running the model. A finished cache entry records the size and sha256 of every file; a file that
does not match (truncated, edited, half-copied) is reported and the features are recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.records import VQARecord
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, digest_problem, file_digest, read_json

FEATURE_KINDS = ("vision", "question", "joint")
FEATURES_VERSION = "2"  # bump when the extraction changes what a cached feature means (2: verified files)
DEFAULT_PROMPT = "answer en {question}"
MEMO_MAX_BYTES = 256 << 20  # per extraction: pooled vision / question features of distinct inputs

Encoder = Callable[[Sequence[VQARecord]], Mapping[str, torch.Tensor]]

__all__ = [
    "DEFAULT_PROMPT",
    "FEATURE_KINDS",
    "FeatureMemo",
    "FeatureSet",
    "extract_features",
    "inference_model",
    "iter_feature_batches",
    "model_fingerprint",
    "pooled_features",
    "pooled_features_masked",
    "processor_encoder",
    "records_fingerprint",
]


# ----------------------------------------------------------------------------- encoding
def processor_encoder(processor, prompt: str = DEFAULT_PROMPT, family=None) -> Encoder:
    """Records → model inputs through the model family's processor (images loaded from disk here).

    ``family``: the model's family (default: the one ``processor`` belongs to). An image file
    shared by several records of a batch is decoded once.
    """
    from ..models.families import family_of_processor

    family = family or family_of_processor(processor)

    def encode(records: Sequence[VQARecord]) -> Mapping[str, torch.Tensor]:
        decoded: dict[str, Any] = {}
        images = []
        for r in records:
            if isinstance(r.image, (str, Path)):
                key = str(r.image)
                if key not in decoded:
                    decoded[key] = r.load_image()
                images.append(decoded[key])
            else:
                images.append(r.load_image())
        return family.feature_inputs(processor, images, [prompt.format(question=r.question) for r in records])

    return encode


def special_token_ids(model, processor=None) -> set[int]:
    """BOS / EOS / PAD ids from the tokenizer (or the model's text config), and with a processor
    the family's structural tokens (neither image nor question, e.g. the markers around an image)."""
    from ..models.families import family_of

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
    if processor is not None:
        ids |= family_of(model).structural_token_ids(processor)
    return ids


def inference_model(model):
    """``model`` for feature extraction: a LoRA-wrapped (peft) model up to 1 GiB is replaced by a
    merged copy (``W + B A`` in one matrix: the same function up to float rounding, ~1e-7
    relative, without the adapters' extra products); anything else is returned as it is. The
    caller's model is never modified. Fingerprint the original, not this copy."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    if not isinstance(model, PeftModel):
        return model
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > (1 << 30):
        return model
    import copy

    try:
        merged = copy.deepcopy(model).merge_and_unload()
    except Exception:  # an adapter type peft cannot merge: use the wrapped model as it is
        return model
    merged.eval()
    return merged


# ----------------------------------------------------------------------------- forward
def _backbone(model):
    """The family's inner model (no LM head) inside ``model`` (also through peft wrappers), or None."""
    from ..models.families import family_of

    return family_of(model).backbone(model)


def _final_states(model, backbone, **inputs) -> torch.Tensor:
    if backbone is not None:  # no LM head: no (batch x length x vocab) logits
        return backbone(**inputs, use_cache=False).last_hidden_state
    out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.float32).unsqueeze(-1)
    return (h.float() * m).sum(1) / m.sum(1)


class FeatureMemo:
    """Pooled features of inputs already seen in one extraction (same model, same settings):
    ``vision`` by the image's pixel values, ``question`` by the attended text tokens. Holds at
    most ``max_bytes`` of features; beyond that, new inputs are simply computed again."""

    def __init__(self, max_bytes: int = MEMO_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.store: dict[str, dict[Any, torch.Tensor]] = {"vision": {}, "question": {}}
        self.hits = {"vision": 0, "question": 0}
        self.computed = {"vision": 0, "question": 0}

    def has(self, kind: str, key) -> bool:
        return key in self.store[kind]

    def get(self, kind: str, key) -> Optional[torch.Tensor]:
        v = self.store[kind].get(key)
        if v is not None:
            self.hits[kind] += 1
        return v

    def put(self, kind: str, key, value: torch.Tensor) -> None:
        self.computed[kind] += 1
        size = value.numel() * value.element_size()
        if self.bytes + size <= self.max_bytes:
            self.store[kind][key] = value
            self.bytes += size


def _pixel_keys(pixel_values: torch.Tensor) -> list[bytes]:
    """One digest per image (row of ``pixel_values``): equal digests = identical pixel values."""
    pv = pixel_values.detach()
    if pv.device.type != "cpu":
        pv = pv.cpu()
    rows = pv.reshape(pv.shape[0], -1).contiguous().view(torch.uint8).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=20).digest() for row in rows]


def _prepare(model, inputs, image_token_id, special_ids):
    """What every pass needs: the family, ids, masks, the family's extra text inputs
    (``text``: PaliGemma's ``token_type_ids``, from the inputs or 0 = all prefix) and the
    image inputs (``image``: pixel values and whatever else the family's vision tower takes)."""
    from ..models.families import family_of

    family = family_of(model)
    if image_token_id is None:
        image_token_id = int(model.config.image_token_id)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    ids = inputs["input_ids"].to(device)
    attn = inputs.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else attn.to(device)
    text = {k: v if inputs.get(k) is None else inputs[k].to(device) for k, v in family.text_only_inputs(ids).items()}
    if inputs.get("pixel_values") is None:
        raise DataError("inputs have no pixel_values: shift features need the image")
    image = _image_inputs(family, inputs, device, dtype)
    is_image, is_text, is_question = family.token_masks(ids, attn, image_token_id, set(special_ids))
    if not bool(is_image.any(1).all()):
        raise DataError(f"a sequence has no image tokens (id {image_token_id}): is it encoded for a {family.name} model?")
    if not bool(is_question.any(1).all()):
        raise DataError("a sequence has no question tokens")
    return family, image_token_id, device, dtype, ids, attn, text, image, is_image, is_text, is_question


def _image_inputs(family, inputs, device, dtype, rows: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The family's image inputs of ``inputs`` (the rows ``rows``, all when None), on the model's
    device; pixel values in the model's dtype."""
    out = {}
    for k in family.image_input_names:
        v = inputs.get(k)
        if v is None:
            continue
        v = v if rows is None else v[rows]
        out[k] = v.to(device, dtype) if k == "pixel_values" else v.to(device)
    return out


def _text_follows_image(is_image: torch.Tensor, is_text: torch.Tensor) -> bool:
    """Whether every row's text comes after all its image tokens. Only then do the text tokens
    alone keep their relative positions: with text before the image (a chat template's turn
    marker), dropping the image closes a gap the masked formulation keeps."""
    length = is_image.shape[1]
    positions = torch.arange(length, device=is_image.device).expand_as(is_image)
    last_image = torch.where(is_image, positions, torch.full_like(positions, -1)).amax(1)
    first_text = torch.where(is_text, positions, torch.full_like(positions, length)).amin(1)
    return bool((first_text > last_image).all())


def _check_kinds(kinds: Sequence[str]) -> None:
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad:
        raise ConfigError(f"unknown feature kind(s) {bad}; known: {', '.join(FEATURE_KINDS)}")


def _check_finite(out: Mapping[str, torch.Tensor], dtype) -> None:
    for k, v in out.items():
        if not torch.isfinite(v).all():
            raise DataError(f"non-finite {k} features (model dtype {dtype}); try --dtype float32")


@torch.inference_mode()
def pooled_features_masked(
    model,
    inputs: Mapping[str, torch.Tensor],
    *,
    image_token_id: Optional[int] = None,
    special_ids: Iterable[int] = (),
    kinds: Sequence[str] = FEATURE_KINDS,
) -> dict[str, torch.Tensor]:
    """The reference formulation: one full-length pass per kind, the masked modality's positions
    given ``attention_mask = 0`` (removed as keys in every layer, never pooled). Used as the
    fallback of :func:`pooled_features` and by the tests."""
    _check_kinds(kinds)
    family, image_token_id, device, dtype, ids, attn, text, image, is_image, is_text, is_question = _prepare(
        model, inputs, image_token_id, special_ids)
    backbone = _backbone(model)
    if backbone is not None and "mm_encoder_outputs" in inspect.signature(backbone.forward).parameters:
        image_outputs = backbone.get_image_features(**image)  # the vision tower runs once per batch

        def image_inputs() -> dict:
            return {"mm_encoder_outputs": {"image": image_outputs}}
    else:

        def image_inputs() -> dict:
            return dict(image)

    out: dict[str, torch.Tensor] = {}
    if "vision" in kinds:
        h = _final_states(model, backbone, input_ids=ids, attention_mask=is_image.long(), **text, **image_inputs())
        out["vision"] = _masked_mean(h, is_image)
    if "question" in kinds:
        # the image positions are masked, so no image is needed (the placeholders stay token embeddings)
        h = _final_states(model, backbone, input_ids=ids, attention_mask=is_text.long(), **text)
        out["question"] = _masked_mean(h, is_question)
    if "joint" in kinds:
        h = _final_states(model, backbone, input_ids=ids, attention_mask=attn, **text, **image_inputs())
        out["joint"] = 0.5 * (_masked_mean(h, is_image) + _masked_mean(h, is_question))
    out = {k: v.float().cpu() for k, v in out.items()}
    _check_finite(out, dtype)
    return out


def _select_outputs(image_outputs, index: Optional[torch.Tensor]):
    """The vision tower's output for the rows ``index`` (all rows when None), as the decoder takes it."""
    if index is None:
        return image_outputs
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pooled = image_outputs.pooler_output
    if isinstance(pooled, (list, tuple)):  # one tensor per image (LLaVA, Idefics3)
        return BaseModelOutputWithPooling(pooler_output=[pooled[i] for i in index.tolist()])
    return BaseModelOutputWithPooling(pooler_output=pooled[index])


@torch.inference_mode()
def pooled_features(
    model,
    inputs: Mapping[str, torch.Tensor],
    *,
    image_token_id: Optional[int] = None,
    special_ids: Iterable[int] = (),
    kinds: Sequence[str] = FEATURE_KINDS,
    memo: Optional[FeatureMemo] = None,
) -> dict[str, torch.Tensor]:
    """One batch: ``{kind: (batch, hidden) float32 CPU tensor}`` from encoded inputs (see the module doc).

    Every kind from one call: the vision tower runs once on the batch's distinct images, the
    ``vision`` and ``question`` passes run on the kept modality's tokens alone (once per distinct
    image / question; ``memo`` carries them across the batches of one extraction), the ``joint``
    pass on the whole prompts. Equal to :func:`pooled_features_masked` up to float rounding. A
    batch whose text does not all follow the image (a chat template), or whose images differ in
    token count, takes :func:`pooled_features_masked`.
    """
    _check_kinds(kinds)
    special_ids = set(special_ids)
    family, image_token_id, device, dtype, ids, attn, text, image, is_image, is_text, is_question = _prepare(
        model, inputs, image_token_id, special_ids)
    backbone = _backbone(model)
    n_image = is_image.sum(1)
    if (
        backbone is None
        or "mm_encoder_outputs" not in inspect.signature(backbone.forward).parameters
        or not bool((n_image == n_image[0]).all())
        or not _text_follows_image(is_image, is_text)
    ):
        return pooled_features_masked(model, inputs, image_token_id=image_token_id, special_ids=special_ids, kinds=kinds)
    memo = memo if memo is not None else FeatureMemo()
    batch = ids.shape[0]
    out: dict[str, torch.Tensor] = {}

    if "question" in kinds:
        # the attended text tokens alone (BOS, prompt, newline), left-padded; pooled on the question tokens
        seqs = [ids[i][is_text[i]] for i in range(batch)]
        pools = [is_question[i][is_text[i]] for i in range(batch)]
        keys = [tuple(s.tolist()) for s in seqs]
        first: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [k for k in first if not memo.has("question", k)]
        fresh: dict[tuple, torch.Tensor] = {}
        if todo:
            width = max(len(k) for k in todo)
            q_ids = torch.zeros((len(todo), width), dtype=ids.dtype, device=device)
            q_attn = torch.zeros_like(q_ids)
            q_pool = torch.zeros((len(todo), width), dtype=torch.bool, device=device)
            for r, k in enumerate(todo):
                i, n = first[k], len(k)
                q_ids[r, width - n:] = seqs[i]
                q_attn[r, width - n:] = 1
                q_pool[r, width - n:] = pools[i]
            h = _final_states(model, backbone, input_ids=q_ids, attention_mask=q_attn, **family.text_only_inputs(q_ids))
            pooled = _masked_mean(h, q_pool).cpu()
            for r, k in enumerate(todo):
                fresh[k] = pooled[r].clone()
                memo.put("question", k, fresh[k])
        found = {k: fresh[k] if k in fresh else memo.get("question", k) for k in first}
        out["question"] = torch.stack([found[k] for k in keys])

    if "vision" in kinds or "joint" in kinds:
        pkeys = _pixel_keys(inputs["pixel_values"])
        first_row: dict[bytes, int] = {}
        for i, k in enumerate(pkeys):
            first_row.setdefault(k, i)
        distinct = list(first_row)
        slot = {k: j for j, k in enumerate(distinct)}
        need_vision = [k for k in distinct if "vision" in kinds and not memo.has("vision", k)]
        need_tower = distinct if "joint" in kinds else need_vision
        tower = None
        if need_tower:
            rows = torch.tensor([first_row[k] for k in need_tower])
            tower = backbone.get_image_features(**_image_inputs(family, inputs, device, dtype, rows))  # once per distinct image of the batch
            tower_slot = {k: j for j, k in enumerate(need_tower)}
        if "vision" in kinds:
            if need_vision:
                # the image tokens alone, no padding: every image has the same token count
                sub = torch.tensor([tower_slot[k] for k in need_vision], device=device)
                v_ids = torch.full((len(need_vision), int(n_image[0])), image_token_id, dtype=ids.dtype, device=device)
                h = _final_states(model, backbone, input_ids=v_ids, attention_mask=torch.ones_like(v_ids),
                                  **family.text_only_inputs(v_ids),
                                  mm_encoder_outputs={"image": _select_outputs(tower, None if len(need_vision) == len(need_tower) else sub)})
                pooled = h.float().mean(1).cpu()
                fresh_v = {k: pooled[r].clone() for r, k in enumerate(need_vision)}
                for k, v in fresh_v.items():
                    memo.put("vision", k, v)
            else:
                fresh_v = {}
            vis = {k: fresh_v[k] if k in fresh_v else memo.get("vision", k) for k in distinct}
            out["vision"] = torch.stack([vis[k] for k in pkeys])
        if "joint" in kinds:
            index = torch.tensor([slot[k] for k in pkeys], device=device)
            identity = len(distinct) == batch  # distinct in row order, so index == arange
            h = _final_states(model, backbone, input_ids=ids, attention_mask=attn, **text,
                              mm_encoder_outputs={"image": _select_outputs(tower, None if identity else index)})
            out["joint"] = (0.5 * (_masked_mean(h, is_image) + _masked_mean(h, is_question))).cpu()
    out = {k: out[k].float() for k in FEATURE_KINDS if k in out}
    _check_finite(out, dtype)
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
    memo: Optional[FeatureMemo] = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(first_row, {kind: float32 array})`` for consecutive batches of ``records``.

    One ``memo`` (a fresh one by default) serves all the batches: a distinct image or question
    runs through its single-modality pass once.
    """
    was_training = model.training
    model.eval()
    special_ids = set(special_ids)
    memo = memo if memo is not None else FeatureMemo()
    try:
        for i in range(start, len(records), batch_size):
            batch = records[i : i + batch_size]
            feats = pooled_features(model, encode(batch), image_token_id=image_token_id, special_ids=special_ids, kinds=kinds, memo=memo)
            yield i, {k: v.numpy().astype(np.float32, copy=False) for k, v in feats.items()}
    finally:
        model.train(was_training)


def processing_order(records: Sequence[VQARecord]) -> np.ndarray:
    """Row order of the extraction: records grouped by image file (stable; in-memory images keep
    their order, after the files), so that a batch shares images. Deterministic for given records."""
    keys = [(0, str(r.image)) if isinstance(r.image, (str, Path)) else (1, "") for r in records]
    return np.array(sorted(range(len(records)), key=keys.__getitem__), dtype=np.int64)


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
    """Features of one split: ``arrays[kind]`` is ``(n, hidden)`` float32 (memory-mapped from a cache).

    ``meta["computed"]`` says whether the model ran (False: read from the cache).
    """

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


def feature_cache_folder(cache_dir: str | Path, model_fp: str, split: str, key: str) -> Path:
    """Where :func:`extract_features` keeps the features of one (model, records, settings) key."""
    return Path(cache_dir) / model_fp[:16] / f"{_safe(split)}-{key[:16]}"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


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
    log: Callable[[str], None] = lambda s: None,
) -> FeatureSet:
    """Features of ``records`` (a model of any family, tiny or full size, plain or peft-wrapped), in
    their order.

    ``processor`` is the model's processor (or None when ``encode`` is given, e.g. in tests with
    hand-made token ids). With ``cache_dir`` the features are written to
    ``cache_dir/<model hash>/<split>-<key>/{kind}.npy`` and memory-mapped back; the key covers
    the weights (``model_fp``, default :func:`model_fingerprint`), the records, the prompt and
    the kinds, so a cache is reused only for the same features. A finished entry's ``meta.json``
    (written last, atomically) records every file's size and sha256; they are checked on every
    read, and an entry that fails the check is logged, deleted and computed again. Progress is
    checkpointed every ``checkpoint_rows`` rows (into ``{kind}.npy.partial``), and a later call
    with the same key resumes from there. ``progress(n_rows_done)`` is called after every batch.
    """
    kinds = tuple(kinds)
    _check_kinds(kinds)
    if not records:
        raise DataError(f"split {split!r} has no records to extract features from")
    if encode is None:
        if processor is None:
            raise ConfigError("extract_features needs a processor or an encode function")
        from ..models.families import family_of

        encode = processor_encoder(processor, prompt, family=family_of(model))
    image_token_id = int(model.config.image_token_id)
    special = special_token_ids(model, processor)
    model_fp = model_fp or model_fingerprint(model)
    key = features_key(model_fp, records_fingerprint(records), prompt=prompt, kinds=kinds)
    qids = [r.question_id for r in records]
    order = processing_order(records)
    ordered = [records[j] for j in order]
    memo = FeatureMemo()

    def batches(start: int = 0):
        return iter_feature_batches(model, ordered, encode=encode, batch_size=batch_size, kinds=kinds,
                                    image_token_id=image_token_id, special_ids=special, start=start, memo=memo)

    if cache_dir is None:
        arrays: dict[str, np.ndarray] = {}
        for i, feats in batches():
            rows = order[i : i + len(feats[kinds[0]])]
            for k in kinds:
                if k not in arrays:
                    arrays[k] = np.empty((len(records), feats[k].shape[1]), dtype=np.float32)
                arrays[k][rows] = feats[k]
            if progress:
                progress(min(len(records), i + batch_size))
        return FeatureSet(qids, arrays, key, None, {"computed": True, "memo_hits": dict(memo.hits)})

    folder = feature_cache_folder(cache_dir, model_fp, split, key)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = read_json(meta_path)
            if meta.get("key") == key and meta.get("complete"):
                fs = _open_cached(folder, meta, kinds, expected_ids=qids)
                if progress:
                    progress(len(fs))
                return fs
        except DataError as exc:
            log(f"feature cache of {split} is damaged ({exc}); computing the features again")
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)

    # resume a partial extraction with the same key, else start afresh
    progress_path = folder / "progress.json"
    partial = {k: folder / f"{k}.npy.partial" for k in kinds}
    done = 0
    state = {}
    if progress_path.is_file():
        try:
            state = read_json(progress_path)
        except DataError:
            state = {}
    arrays = {}
    if state.get("key") == key and all(p.is_file() for p in partial.values()):
        try:
            arrays = {k: np.load(partial[k], mmap_mode="r+", allow_pickle=False) for k in kinds}
            if any(a.shape[0] != len(records) or a.dtype != np.float32 for a in arrays.values()):
                raise ValueError("shape")
            done = min(int(state.get("rows_done", 0)), len(records))
        except (OSError, ValueError):
            arrays, done = {}, 0
    if progress and done:
        progress(done)

    rows_since_flush = 0
    for i, feats in batches(done):
        if not arrays:
            for k in kinds:
                arrays[k] = np.lib.format.open_memmap(partial[k], mode="w+", dtype=np.float32,
                                                      shape=(len(records), feats[k].shape[1]))
        j = i + len(feats[kinds[0]])
        rows = order[i:j]
        for k in kinds:
            arrays[k][rows] = feats[k]
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
    hidden = int(next(iter(arrays.values())).shape[1])
    del arrays
    # commit: each file complete and on disk under its final name, then the meta that vouches for them
    files = {}
    for k in kinds:
        _fsync(partial[k])
        files[f"{k}.npy"] = file_digest(partial[k])
        os.replace(partial[k], folder / f"{k}.npy")
    atomic_write_json(folder / "question_ids.json", qids, indent=None)
    files["question_ids.json"] = file_digest(folder / "question_ids.json")
    meta = {
        "key": key,
        "complete": True,
        "split": split,
        "n": len(records),
        "kinds": list(kinds),
        "hidden_size": hidden,
        "model_fingerprint": model_fp,
        "prompt": prompt,
        "version": FEATURES_VERSION,
        "files": files,
    }
    atomic_write_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    fs = _open_cached(folder, meta, kinds, expected_ids=qids, verify=False)
    fs.meta = {**meta, "computed": True, "memo_hits": dict(memo.hits)}
    return fs


def _open_cached(folder: Path, meta: dict, kinds: Sequence[str], *, expected_ids: Optional[Sequence[str]] = None,
                 verify: bool = True) -> FeatureSet:
    """A finished cache entry, checked against the sizes and sha256 its meta records (``verify``),
    its shapes and the expected question ids; :class:`DataError` when anything disagrees."""
    missing = [k for k in kinds if k not in meta.get("kinds", [])]
    if missing:
        raise DataError(f"feature cache lacks kinds {missing}", path=folder)
    files = meta.get("files")
    if not isinstance(files, dict):
        raise DataError("feature cache records no file checksums", path=folder)
    if verify:
        for name in ["question_ids.json", *(f"{k}.npy" for k in kinds)]:
            problem = digest_problem(folder / name, files.get(name))
            if problem:
                raise DataError(problem, path=folder / name)
    qids = read_json(folder / "question_ids.json")
    if not isinstance(qids, list) or len(qids) != meta.get("n"):
        raise DataError("cached question ids do not match the recorded count", path=folder)
    if expected_ids is not None and list(qids) != list(expected_ids):
        raise DataError("cached question ids are not the requested records", path=folder)
    arrays = {}
    for k in kinds:
        try:
            arrays[k] = np.load(folder / f"{k}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable cached features ({exc})", path=folder / f"{k}.npy") from None
        if arrays[k].shape != (len(qids), meta.get("hidden_size")) or arrays[k].dtype != np.float32:
            raise DataError(f"cached {k} features have shape {arrays[k].shape} {arrays[k].dtype}, "
                            f"expected ({len(qids)}, {meta.get('hidden_size')}) float32", path=folder)
    return FeatureSet(list(qids), arrays, meta["key"], folder, {**meta, "computed": False})
