"""Run configuration (pydantic): recorded in full in every results file, YAML/JSON in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from .errors import ConfigError


# numpy's legacy seeding (and so every library seeded through it) takes 32-bit seeds only
MAX_SEED = 2**32 - 1
DEFAULT_PROMPT = "answer en {question}"
DTYPES = ("float32", "bfloat16", "float16")


def check_prompt(prompt: str) -> str:
    """``prompt`` if it is a template with one field, ``{question}`` (a template without it
    would ask every question the same thing); else a ValueError saying what is wrong."""
    if not isinstance(prompt, str) or "{question}" not in prompt:
        raise ValueError("the prompt must contain {question}")
    try:
        prompt.format(question="")
    except KeyError as exc:
        raise ValueError(f"the prompt has a field {{{exc.args[0]}}}; {{question}} is the only one (write {{{{ and }}}} for braces)") from None
    except (IndexError, ValueError) as exc:
        raise ValueError(f"the prompt is not a valid template ({exc}; write {{{{ and }}}} for braces)") from None
    return prompt


def check_family(family: Optional[str]) -> Optional[str]:
    """``family`` if a model family has that name (None: detect it from the checkpoint); else a
    ValueError listing the known names."""
    if family is None:
        return None
    from .models.families import family_names

    if family not in family_names():
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(family_names())}")
    return family


def _without_unset_family(data: Any) -> Any:
    """A dumped config without ``family`` when it is unset: configs, run folders and results
    written before families existed stay byte-identical, and a resume compares equal."""
    if isinstance(data, dict) and data.get("family") is None:
        data.pop("family", None)
    return data


def check_device(device: Optional[str]) -> Optional[str]:
    """``device`` if torch can use it here (None: the default, cuda when available); else a
    ConfigError naming it."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available on this machine")
    return device


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    eval_steps: int = Field(0, ge=0)  # validation every N optimizer steps (0: only at the end)
    validation_size: int = Field(300, ge=0)
    save_steps: int = Field(100, ge=0)  # checkpoint every N steps (and at the end) for resume (0: none)
    save_total_limit: int = Field(2, ge=0)  # keep the newest N checkpoints (0: all); 2 leaves a fallback if the newest is damaged
    # Added for the paper recipes (vqa_ood_bench/configs/paper/); the defaults keep the earlier behaviour.
    warmup_steps: int = Field(0, ge=0)  # > 0 overrides warmup_ratio
    warmup_start_lr: float = Field(0.0, ge=0)  # linear warm-up starts here (the paper: 1e-4)
    min_learning_rate: float = Field(0.0, ge=0)  # the cosine ends here (the paper: 1e-4)
    eval_epochs: float = Field(0.0, ge=0)  # > 0: validation every N epochs (overrides eval_steps)
    sharding: Literal["none", "fsdp", "deepspeed"] = "none"  # parameter sharding on top of data parallelism


class _ModelOptions(BaseModel):
    """What :class:`RunConfig` and :class:`EvalConfig` check alike: the prompt template and the
    family name; an unset family stays out of dumps, so the configs and results of runs
    without ``--family`` read as before."""

    @field_validator("prompt", check_fields=False)
    @classmethod
    def _prompt_template(cls, value: str) -> str:
        return check_prompt(value)

    @field_validator("family", check_fields=False)
    @classmethod
    def _known_family(cls, value: Optional[str]) -> Optional[str]:
        return check_family(value)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _without_unset_family(handler(self))


class RunConfig(_ModelOptions):
    """Everything that determines a run's numbers."""

    model_config = ConfigDict(extra="forbid")

    method: str = "vanilla"
    method_params: dict[str, Any] = Field(default_factory=dict)
    adapter: Literal["lora", "full"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    model: str = "tiny"
    model_revision: Optional[str] = None
    family: Optional[str] = None  # the model family (--family); None: detected from the checkpoint's model_type
    suite: str = "embedded"
    data_root: Optional[str] = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Optional[str] = None  # None: cuda if available, else cpu
    # Intra-op CPU threads during the run (0: torch's default). Float sums depend on the count,
    # so the embedded suite's published numbers hold for 2 (numerics.py).
    cpu_threads: int = Field(2, ge=0, le=1024)
    prompt: str = DEFAULT_PROMPT
    eval_batch_size: int = Field(128, ge=1)
    max_new_tokens: int = Field(4, ge=1)
    num_beams: int = Field(1, ge=1)
    scoring_variant: str = "official"
    limit: Optional[int] = Field(None, ge=1)  # cap records per split (smoke runs)
    train: TrainConfig = Field(default_factory=TrainConfig)


class EvalConfig(_ModelOptions):
    """Everything that determines an evaluation's numbers (``vqa-ood-bench eval``): a model, an
    optional PEFT adapter, a suite and the prediction options. The prediction fields have
    :class:`RunConfig`'s names, meanings and defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny"
    model_revision: Optional[str] = None
    adapter_path: Optional[str] = None  # a PEFT adapter folder (a run folder is resolved to its adapter/)
    family: Optional[str] = None  # the model family (--family); None: detected from the checkpoint's model_type
    suite: str = "embedded"
    data_root: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Optional[str] = None
    cpu_threads: int = Field(2, ge=0, le=1024)
    prompt: str = DEFAULT_PROMPT
    eval_batch_size: int = Field(128, ge=1)
    max_new_tokens: int = Field(4, ge=1)
    num_beams: int = Field(1, ge=1)
    scoring_variant: str = "official"


def config_path(ref: str | Path) -> Path:
    """The config file ``ref`` names: a file, else a packaged config (``embedded``, ``paper/vqa-digrap``)."""
    path = Path(ref)
    if path.is_file():
        return path
    from . import configs

    packaged = configs.path(str(ref))
    if packaged is not None:
        return packaged
    if path.exists():  # a folder, say: reading it says what is wrong
        return path
    raise ConfigError(f"no config file {str(ref)!r} and no packaged config of that name; packaged configs: {', '.join(configs.names())}")


def load_config(path: str | Path) -> RunConfig:
    """The run config in file ``path``, or the packaged config of that name (see :func:`config_path`)."""
    path = config_path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from Windows editors is not part of the YAML
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text (byte {exc.start}); YAML and JSON configs must be UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of run options (key: value), got a {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {loc}: {err['msg']}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
