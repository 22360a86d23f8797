"""ClipMatch (Ging et al., ICLR 2024): score a free-text answer against a class list by text embeddings.

The model's answer and every class name are embedded by the text tower of a CLIP model
(default: EVA-CLIP ``EVA01-g-14`` / ``laion400m_s11b_b41k`` from open_clip, as in the paper's
code); a class's embedding is the mean of its L2-normalised embeddings over prompt templates
(default: the 80 OpenAI ImageNet templates that open_clip ships), the answer is embedded as it
is, and the class with the highest cosine similarity is the answer's class. Top-1 and top-5
accuracy follow. Class names are read with ``_`` as a space, as in the paper's code.

Cost control:

* predictions are deduplicated before embedding, first as strings, then (with the open_clip
  embedder) as token sequences: strings the tokenizer maps to the same tokens (``Dog`` /
  ``dog `` for CLIP's lower-casing tokenizer) are embedded once. The result is exactly what
  embedding every prediction would give, because the text tower is a function of the tokens.
* class embeddings are cached on disk (``.npy``) under a key made of the embedder identity,
  the class names and the template strings; a changed list, template set or checkpoint file
  gives a new key. An embedder whose weights are not identified (``pretrained=None``, a random
  initialisation) is never cached.
* embedding is batched, under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes, atomic_write_json

DEFAULT_MODEL = "EVA01-g-14"
DEFAULT_PRETRAINED = "laion400m_s11b_b41k"
DEFAULT_TEMPLATES = "openai_imagenet"
CACHE_FORMAT = 1

Template = Union[str, Callable[[str], str]]


def _import_open_clip() -> Any:
    """open_clip, an optional dependency (the ``clipmatch`` extra)."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError("ClipMatch needs open_clip, which is not installed: pip install 'vqa-ood-bench[clipmatch]'") from None
    return open_clip


def template_set(name: str) -> tuple[str, ...]:
    """Named template sets as format strings with one ``{}``."""
    if name == "none":
        return ("{}",)
    open_clip = _import_open_clip()

    sets = {"openai_imagenet": open_clip.OPENAI_IMAGENET_TEMPLATES, "simple_imagenet": open_clip.SIMPLE_IMAGENET_TEMPLATES}
    if name not in sets:
        raise ConfigError(f"unknown template set {name!r}; known: none, {', '.join(sets)}")
    return tuple(t("{}") for t in sets[name])


def resolve_templates(templates: str | Sequence[Template]) -> tuple[str, ...]:
    """A set name, or a sequence of format strings / callables ``c -> prompt``, as format strings."""
    if isinstance(templates, str):
        return template_set(templates)
    out = []
    for t in templates:
        s = t("{}") if callable(t) else str(t)
        if s.count("{}") != 1:
            raise ConfigError(f"a prompt template needs exactly one '{{}}' for the class name, got {s!r}")
        out.append(s)
    if not out:
        raise ConfigError("at least one prompt template is needed")
    return tuple(out)


def class_prompt_name(name: str) -> str:
    return name.replace("_", " ")


@runtime_checkable
class TextEmbedder(Protocol):
    """What ClipMatch needs: L2-normalised float32 rows for texts, and an identity for caching."""

    @property
    def cache_key(self) -> Optional[str]: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def default_cache_dir() -> Path:
    env = os.environ.get("VQA_OOD_BENCH_CACHE")
    if env:
        return Path(env) / "clipmatch"
    import platformdirs

    return Path(platformdirs.user_cache_dir("vqa_ood_bench")) / "clipmatch"


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class OpenClipTextEmbedder:
    """The text tower of an open_clip model.

    ``model_name``: a built-in or registered config name (``EVA01-g-14``), ``hf-hub:org/repo``
    or ``local-dir:/folder``. ``pretrained``: a tag of that config (``laion400m_s11b_b41k``), a
    checkpoint file, or None (random weights: for tests only, never cached). ``config_dir``: a
    folder (or JSON file) of extra model configs, registered with ``open_clip.add_model_config``.
    The model is built on first use; the vision tower is dropped after loading.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: Optional[str] = DEFAULT_PRETRAINED,
        *,
        device: Optional[str] = None,
        precision: str = "fp32",
        batch_size: int = 256,
        config_dir: Optional[str | Path] = None,
        weights_cache_dir: Optional[str | Path] = None,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        self.model_name = model_name
        self.pretrained = None if pretrained in (None, "", "none") else str(pretrained)
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.config_dir = None if config_dir is None else Path(config_dir)
        self.weights_cache_dir = None if weights_cache_dir is None else str(weights_cache_dir)
        self._model: Any = None
        self._tokenizer: Any = None
        # Counters: texts asked for, distinct token sequences actually run through the tower, forward batches.
        self.texts_requested = 0
        self.rows_embedded = 0
        self.forward_calls = 0

    # -- identity ---------------------------------------------------------------------------
    @property
    def cache_key(self) -> Optional[str]:
        if self.model_name.startswith("local-dir:"):
            folder = Path(self.model_name[len("local-dir:") :])
            files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            return "open_clip|" + "|".join(_file_identity(p) for p in files)
        if self.pretrained is None:
            return None
        weights = self.pretrained
        p = Path(weights)
        if p.is_file():
            weights = "file:" + _file_identity(p)
        return f"open_clip|{self.model_name}|{weights}|{self.precision}"

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is not None:
            return
        import torch

        open_clip = _import_open_clip()

        if self.config_dir is not None:
            if not self.config_dir.exists():
                raise ConfigError(f"open_clip config folder {str(self.config_dir)!r} does not exist")
            open_clip.add_model_config(self.config_dir)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = open_clip.create_model(
                self.model_name,
                pretrained=self.pretrained,
                device=device,
                precision=self.precision,
                cache_dir=self.weights_cache_dir,
            )
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except RuntimeError as exc:  # unknown names and missing tags surface as RuntimeError
            raise ConfigError(f"cannot build open_clip model {self.model_name!r} / {self.pretrained!r}: {exc}") from None
        except (OSError, ValueError) as exc:  # offline without cached weights, bad checkpoint files
            raise ConfigError(
                f"cannot load weights for open_clip model {self.model_name!r} / {self.pretrained!r}: {exc}"
            ) from None
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # text-only use; frees the (large) image tower
        model.eval()
        self._device = device
        self._model = model
        self._tokenizer = tokenizer

    # -- embedding --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        return self._tokenizer(list(texts)).numpy()

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        self._load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(tokens), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(tokens[start : start + self.batch_size])).to(self._device)
                feats = self._model.encode_text(batch, normalize=True)
                out.append(feats.float().cpu().numpy())
                self.forward_calls += 1
        self.rows_embedded += len(tokens)
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, one row per text; equal token sequences are run once."""
        self.texts_requested += len(texts)
        if len(texts) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        tokens = self.tokenize(texts)
        uniq, inverse = np.unique(tokens, axis=0, return_inverse=True)
        emb = self.encode_tokens(uniq)
        return emb[inverse.reshape(-1)]


def build_embedder(
    model: str = DEFAULT_MODEL,
    pretrained: Optional[str] = DEFAULT_PRETRAINED,
    **kwargs: Any,
) -> OpenClipTextEmbedder:
    return OpenClipTextEmbedder(model, pretrained, **kwargs)


@dataclass
class ClipMatchResult:
    """Percentages are 0-100; per-question arrays are float64 0/1."""

    n: int
    top1: float
    top5: float
    predicted: list[str] = field(default_factory=list)  # top-1 class name per question
    correct_top1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    correct_top5: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_unique_predictions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "clipmatch_top1": self.top1, "clipmatch_top5": self.top5, "n_unique_predictions": self.n_unique_predictions}


class ClipMatcher:
    """Match free-text answers to ``class_names`` by text-embedding cosine similarity."""

    def __init__(
        self,
        class_names: Sequence[str],
        embedder: TextEmbedder,
        *,
        templates: str | Sequence[Template] = DEFAULT_TEMPLATES,
        cache_dir: Optional[str | Path] | bool = None,
        chunk_size: int = 8192,
    ):
        names = list(class_names)
        if not names:
            raise ConfigError("ClipMatch needs at least one class name")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"class name {dup!r} occurs twice in the class list")
        self.class_names = names
        self.embedder = embedder
        self.templates = resolve_templates(templates)
        if cache_dir is False:
            self.cache_dir: Optional[Path] = None
        elif cache_dir is None or cache_dir is True:
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self._class_emb: Optional[np.ndarray] = None
        self._index = {n: i for i, n in enumerate(names)}
        self.cache_hit: Optional[bool] = None  # set when the class embeddings are first needed

    # -- class embeddings -------------------------------------------------------------------
    def cache_path(self) -> Optional[Path]:
        key = self.embedder.cache_key
        if key is None or self.cache_dir is None:
            return None
        blob = json.dumps(
            {"format": CACHE_FORMAT, "embedder": key, "classes": self.class_names, "templates": list(self.templates)},
            ensure_ascii=False,
        ).encode()
        return self.cache_dir / f"{hashlib.sha256(blob).hexdigest()[:40]}.npy"

    @property
    def class_embeddings(self) -> np.ndarray:
        """(classes, dim) float32, unit rows: the template-mean embedding of each class, normalised."""
        if self._class_emb is None:
            path = self.cache_path()
            if path is not None and path.is_file():
                try:
                    emb = np.load(path, allow_pickle=False)
                except (OSError, ValueError):
                    emb = None  # a damaged cache file is recomputed and replaced
                if emb is not None and emb.ndim == 2 and emb.shape[0] == len(self.class_names):
                    self._class_emb = emb.astype(np.float32, copy=False)
                    self.cache_hit = True
                    return self._class_emb
            self._class_emb = self._compute_class_embeddings()
            self.cache_hit = False
            if path is not None:
                buf = io.BytesIO()
                np.save(buf, self._class_emb, allow_pickle=False)
                atomic_write_bytes(path, buf.getvalue())
                atomic_write_json(
                    path.with_suffix(".json"),
                    {"embedder": self.embedder.cache_key, "n_classes": len(self.class_names), "templates": len(self.templates)},
                )
        return self._class_emb

    def _compute_class_embeddings(self) -> np.ndarray:
        n_t = len(self.templates)
        prompts = [t.replace("{}", class_prompt_name(c)) for c in self.class_names for t in self.templates]
        emb = np.asarray(self.embedder.encode(prompts), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(prompts):
            raise ConfigError(f"embedder returned shape {emb.shape} for {len(prompts)} prompts")
        mean = emb.reshape(len(self.class_names), n_t, -1).mean(axis=1)
        return _unit_rows(mean)

    # -- matching ---------------------------------------------------------------------------
    def embed_predictions(self, predictions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings of the distinct predictions, index of each prediction's row)."""
        for i, p in enumerate(predictions):
            if not isinstance(p, str):
                raise DataError(f"prediction must be a string, got {type(p).__name__}", record=i)
        distinct = list(dict.fromkeys(predictions))
        row = {s: i for i, s in enumerate(distinct)}
        inverse = np.fromiter((row[p] for p in predictions), dtype=np.int64, count=len(predictions))
        emb = _unit_rows(np.asarray(self.embedder.encode(distinct), dtype=np.float32)) if distinct else np.zeros((0, 1), np.float32)
        return emb, inverse

    def topk(self, predictions: Sequence[str], k: int = 5) -> np.ndarray:
        """(n, min(k, classes)) class indices, best first."""
        cls = self.class_embeddings
        k = min(k, cls.shape[0])
        emb, inverse = self.embed_predictions(predictions)
        top = np.empty((emb.shape[0], k), dtype=np.int64)
        for s in range(0, emb.shape[0], self.chunk_size):
            sims = emb[s : s + self.chunk_size] @ cls.T
            if k < sims.shape[1]:
                part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
            order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
            top[s : s + self.chunk_size] = np.take_along_axis(part, order, axis=1)
        self.last_unique = emb.shape[0]
        return top[inverse]

    def target_indices(self, targets: Sequence[str | int]) -> np.ndarray:
        out = np.empty(len(targets), dtype=np.int64)
        n = len(self.class_names)
        for i, t in enumerate(targets):
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                if not 0 <= int(t) < n:
                    raise DataError(f"target class index {t} is outside 0..{n - 1}", record=i)
                out[i] = int(t)
            else:
                try:
                    out[i] = self._index[t]
                except KeyError:
                    raise DataError(f"target {t!r} is not in the class list", record=i) from None
        return out

    def score(self, predictions: Sequence[str], targets: Sequence[str | int]) -> ClipMatchResult:
        if len(predictions) != len(targets):
            raise DataError(f"{len(predictions)} predictions but {len(targets)} targets")
        tgt = self.target_indices(targets)
        n = len(predictions)
        if n == 0:
            return ClipMatchResult(n=0, top1=0.0, top5=0.0)
        top = self.topk(predictions, k=5)
        c1 = (top[:, 0] == tgt).astype(np.float64)
        c5 = (top == tgt[:, None]).any(axis=1).astype(np.float64)
        return ClipMatchResult(
            n=n,
            top1=float(100 * c1.mean()),
            top5=float(100 * c5.mean()),
            predicted=[self.class_names[i] for i in top[:, 0]],
            correct_top1=c1,
            correct_top5=c5,
            n_unique_predictions=self.last_unique,
        )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)
