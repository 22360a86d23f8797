"""Evaluate-only: a model, optionally with a PEFT adapter, predicted and scored on a suite.

``vqa-ood-bench eval`` calls :func:`evaluate_model` (loads the model by name or folder, applies
the adapter); :func:`evaluate` takes a model and processor already in memory. Both write the
folder a run writes, minus training: ``config.yaml``, ``predictions/<split>.jsonl``,
``samples/<split>.jsonl`` (per-sample logs, :mod:`vqa_ood_bench.predict.samples`) and
``results.json``, whose ``method`` is ``"eval"`` and whose ``model`` names what was evaluated
(model, revision, content hash of the tiny model, the adapter and the SHA-256 of its weights).
Prediction and scoring are the run's own code (``runner._predict_and_score``), so an eval of a
run's adapter with the run's prediction options writes the run's predictions files, byte for
byte.

A LoRA run saves its fine-tuned adapter as a standard PEFT folder, ``RUN_DIR/adapter/``
(``save_pretrained`` of the model it evaluated, after the method's ``finalize``), with
``vqa_ood_bench.json`` beside PEFT's files recording the base model and the run's prediction
options. ``eval --adapter`` takes such a folder, any PEFT adapter folder, or a run folder
(meaning its ``adapter/``). Runs whose trained tensors are not all LoRA weights (full
fine-tuning, linear probing, LP-FT's untied head) save none.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from . import distributed, numerics
from .config import DEFAULT_PROMPT, DTYPES, EvalConfig, check_device
from .errors import ConfigError
from .io import file_digest
from .report.schema import ModelInfo, RunResults

Log = Callable[[str], None]

EVAL_METHOD = "eval"  # results.json's method for an evaluation: no fine-tuning method made it
ADAPTER_DIR = "adapter"  # a run folder's PEFT adapter
ADAPTER_RECORD = "vqa_ood_bench.json"  # beside PEFT's files: base model, origin, prediction options
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Options an adapter's record supplies when the command line does not: the ones its run predicted with.
RECORDED_OPTIONS = ("prompt", "max_new_tokens", "num_beams", "dtype", "cpu_threads")


# --- adapters --------------------------------------------------------------------------------

def adapter_problem(model) -> Optional[str]:
    """Why ``model``'s fine-tuned state is not a PEFT adapter (None when it is one)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return "its trained weights are not a PEFT adapter (full fine-tuning or a head-only method)"
    outside = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    if outside:
        return f"it trains tensors outside the LoRA adapter (e.g. {outside[0]})"
    return None


def save_run_adapter(model, run_dir: Path, record: dict[str, Any], *, log: Log = lambda s: None) -> Optional[Path]:
    """Write ``model``'s adapter to ``run_dir/adapter`` as a PEFT folder (replacing one there as
    a whole: written aside, then renamed), with ``record`` as ``vqa_ood_bench.json``. None, with
    a log line, when the model has no adapter PEFT can hold."""
    problem = adapter_problem(model)
    if problem:
        log(f"no PEFT adapter saved: {problem}; evaluate this run through its folder's trained_state.pt (runner.load_run_model)")
        return None
    target = run_dir / ADAPTER_DIR
    peft_config = model.peft_config[model.active_adapter]
    before = (peft_config.base_model_name_or_path, peft_config.revision)
    base = record["base_model"]
    # The name the run knows the model by ("tiny", a hub id), not the folder it was loaded from here.
    peft_config.base_model_name_or_path, peft_config.revision = base["name_or_path"], base.get("revision")
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=run_dir))
    try:
        with _quiet_peft():
            model.save_pretrained(tmp)
        (tmp / ADAPTER_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        old = run_dir / f".adapter-old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        peft_config.base_model_name_or_path, peft_config.revision = before
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT looks for the base model's config under its recorded name (to see whether the
    vocabulary grew) and warns when there is none; "tiny" names no folder, and LoRA on the
    attention projections leaves the vocabulary alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
        yield


def resolve_adapter(path: str | Path) -> Path:
    """The PEFT adapter folder ``path`` names: the folder itself, or a run folder's ``adapter/``."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"adapter {str(path)!r}: no such folder")
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    if (folder / "results.json").is_file() or (folder / "config.yaml").is_file():
        if (folder / ADAPTER_DIR / ADAPTER_CONFIG).is_file():
            return folder / ADAPTER_DIR
        raise ConfigError(
            f"run folder {str(path)!r} has no PEFT adapter ({ADAPTER_DIR}/): LoRA runs save one (runs made before this "
            "version: run the same command again, which keeps the training and writes it); full fine-tuning and "
            "head-only methods have none"
        )
    raise ConfigError(f"adapter {str(path)!r} is neither a PEFT adapter folder ({ADAPTER_CONFIG}) nor a run folder")


def adapter_weights(folder: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"adapter {str(folder)!r} has no weights file ({' or '.join(ADAPTER_WEIGHTS)})")


def read_adapter_record(folder: Path) -> dict[str, Any]:
    """``vqa_ood_bench.json`` of an adapter a run saved; {} for other adapters. The base model
    falls back to PEFT's ``base_model_name_or_path``."""
    record: dict[str, Any] = {}
    path = folder / ADAPTER_RECORD
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: expected a JSON object")
    if not record.get("base_model"):
        try:
            peft_config = json.loads((folder / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder / ADAPTER_CONFIG}: unreadable ({exc})") from None
        if peft_config.get("base_model_name_or_path"):
            record["base_model"] = {"name_or_path": peft_config["base_model_name_or_path"], "revision": peft_config.get("revision")}
    return record


def adapter_defaults(path: str | Path) -> dict[str, Any]:
    """What an adapter says about how to evaluate it: ``model`` (its base), ``model_revision``,
    the prediction options its run used (:data:`RECORDED_OPTIONS`) and the family its run was
    told (``--family``), where recorded."""
    record = read_adapter_record(resolve_adapter(path))
    base = record.get("base_model") or {}
    out: dict[str, Any] = {}
    if base.get("name_or_path"):
        out["model"] = base["name_or_path"]
        out["model_revision"] = base.get("revision")
    out.update({k: v for k, v in (record.get("prediction") or {}).items() if k in RECORDED_OPTIONS})
    if record.get("family"):
        out["family"] = record["family"]
    return out


def apply_adapter(model, folder: Path):
    """``model`` with the PEFT adapter in ``folder``, for inference; every tensor of the adapter
    file must land in the model (a ConfigError names the first that does not)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    weights = adapter_weights(folder)
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as exc:
        raise ConfigError(f"adapter {str(folder)!r} does not fit the model: {str(exc).strip().splitlines()[0]}") from None
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        saved = load_file(str(weights))
    else:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
    with _quiet_peft():
        loaded = get_peft_model_state_dict(wrapped)
    for name, tensor in saved.items():
        if name not in loaded:
            raise ConfigError(f"adapter {str(folder)!r} does not fit the model: it has {name}, which the model lacks")
        if not torch.equal(loaded[name].detach().cpu().to(tensor.dtype), tensor):
            raise ConfigError(f"adapter {str(folder)!r}: {name} did not load as saved")
    wrapped.eval()
    return wrapped


# --- loading ---------------------------------------------------------------------------------

def load_eval_model(config: EvalConfig, *, log: Log = lambda s: None, show_progress: bool = True):
    """(model, processor, ModelInfo): ``config.model`` on ``config.device`` in ``config.dtype``,
    with ``config.adapter_path`` applied.

    For the tiny model, an adapter a run saved names the exact tiny model the run used (its
    content hash), and that one is loaded: LoRA weights on another base would be meaningless.
    """
    from .models.paligemma import TINY
    from .runner import load_model

    check_device(config.device)
    folder = resolve_adapter(config.adapter_path) if config.adapter_path else None
    record = read_adapter_record(folder) if folder is not None else {}
    base = record.get("base_model") or {}
    tiny_key = None
    if base.get("name_or_path") and base["name_or_path"] != config.model:
        log(f"warning: the adapter was trained on {base['name_or_path']!r}; evaluating it on {config.model!r}")
    elif config.model == TINY and base.get("content_hash"):
        tiny_key = base["content_hash"]
    torch.manual_seed(config.seed)
    model, processor, info = load_model(config, log, show_progress, tiny_key=tiny_key)
    if folder is not None:
        from .models.paligemma import count_parameters

        model = apply_adapter(model, folder)
        info.parameters = count_parameters(model)[0]
        info.adapter = str(config.adapter_path)
        info.adapter_sha256 = file_digest(adapter_weights(folder))["sha256"]
        origin = {k: record[k] for k in ("run_id", "method", "method_params") if k in record}
        info.adapter_origin = origin or None
        log(f"adapter {folder} applied ({info.adapter_sha256[:12]})")
    model.eval()
    return model, processor, info


# --- evaluation ------------------------------------------------------------------------------

def evaluate_model(config: EvalConfig, out_dir: str | Path | None = None, *, log: Log = lambda s: None,
                   show_progress: bool = True) -> RunResults:
    """Load ``config.model`` (+ adapter) and evaluate it on ``config.suite`` into ``out_dir``
    (default: a new folder under ``runs/``). What ``vqa-ood-bench eval`` runs."""
    from .data.suite import get_suite

    suite = get_suite(config.suite)
    check_device(config.device)
    if config.adapter_path:
        resolve_adapter(config.adapter_path)  # a bad path is refused before any loading
    with _eval_folder(out_dir) as run_dir, numerics.fixed_cpu_numerics(config.cpu_threads):
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        t = time.perf_counter()
        with distributed.main_first():
            model, processor, info = load_eval_model(config, log=log, show_progress=show_progress)
        timings["model_s"] = time.perf_counter() - t
        return _evaluate_into(run_dir, model, processor, suite, config, info, log=log, show_progress=show_progress,
                              t_start=t_start, timings=timings)


def evaluate(
    model,
    processor,
    suite,
    *,
    out_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    limit: Optional[int] = None,
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 128,
    max_new_tokens: int = 4,
    num_beams: int = 1,
    scoring_variant: str = "official",
    seed: int = 0,
    cpu_threads: Optional[int] = None,
    model_info: Optional[ModelInfo] = None,
    log: Log = lambda s: None,
    show_progress: bool = False,
) -> RunResults:
    """Predict and score ``model`` (a transformers vision-language model, PEFT-wrapped or not)
    with ``processor`` on ``suite`` (a name or a :class:`~vqa_ood_bench.data.suite.Suite`);
    results, predictions and sample logs into ``out_dir``; returns the results.

    ``model_info`` names the model in the results; by default its config's ``_name_or_path``
    (and, for a PEFT model, the adapter's base). ``cpu_threads``: torch's intra-op threads
    during the evaluation (None: leave the process's). A folder that holds an evaluation with
    other options or another model identity is refused; with the same, finished predictions
    are kept (resume).
    """
    from pydantic import ValidationError

    from .data.suite import Suite, get_suite
    from .models.paligemma import count_parameters

    suite_obj = suite if isinstance(suite, Suite) else get_suite(suite)
    param = next(model.parameters())
    dtype = str(param.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ConfigError(f"the model's dtype {dtype} is not one of {', '.join(DTYPES)}")
    info = model_info.model_copy() if model_info is not None else _describe(model, count_parameters(model)[0])
    # Only a folder named by the caller lets the model be rebuilt from the results (load_run_model).
    adapter_path = info.adapter if model_info is not None else None
    try:
        config = EvalConfig(model=info.name_or_path, model_revision=info.revision, adapter_path=adapter_path, suite=suite_obj.name,
                            data_root=None if data_root is None else str(data_root), limit=limit, seed=seed, dtype=dtype,
                            device=str(param.device), cpu_threads=cpu_threads or 0, prompt=prompt, eval_batch_size=batch_size,
                            max_new_tokens=max_new_tokens, num_beams=num_beams, scoring_variant=scoring_variant)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"evaluate: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    with _eval_folder(out_dir) as run_dir, numerics.fixed_cpu_numerics(config.cpu_threads):
        return _evaluate_into(run_dir, model, processor, suite_obj, config, info, log=log, show_progress=show_progress,
                              t_start=time.perf_counter(), timings={})


def _describe(model, parameters: int) -> ModelInfo:
    """A model's identity from itself: its config's name, and a PEFT adapter's base."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    peft_config = getattr(model, "peft_config", None)
    adapter = None
    if isinstance(peft_config, dict) and peft_config:
        active = peft_config.get(getattr(model, "active_adapter", "default")) or next(iter(peft_config.values()))
        name = getattr(active, "base_model_name_or_path", None) or name
        adapter = f"PEFT adapter {getattr(model, 'active_adapter', 'default')!r} (in memory)"
    return ModelInfo(name_or_path=str(name), parameters=parameters, adapter=adapter)


def _eval_folder(out_dir) -> contextlib.AbstractContextManager[Path]:
    """The evaluation folder (created, checked writable, the same on every process), locked as
    a run folder is while the block runs."""
    from .runner import locked_run_folder

    return locked_run_folder(out_dir, EVAL_METHOD)


def _evaluate_into(run_dir: Path, model, processor, suite, config: EvalConfig, info: ModelInfo, *, log: Log, show_progress: bool,
                   t_start: float, timings: dict[str, float]) -> RunResults:
    import yaml

    from .report.intervals import fill_intervals
    from .runner import _predict_and_score, assemble_results, publish_results, record_config

    # The folder's record of what it holds: the options and the model's identity. Another
    # model or other options would mix their predictions with these on a resume.
    identity = {k: v for k, v in info.model_dump(mode="json").items() if k in ("name_or_path", "revision", "content_hash", "adapter", "adapter_sha256")}
    config_text = yaml.safe_dump({"task": EVAL_METHOD, **config.model_dump(mode="json"), "model_identity": identity}, sort_keys=False)
    record_config(run_dir, config_text, refusal="holds a run or evaluation with other options or another model; choose a new --out")

    t = time.perf_counter()
    log(f"suite {suite.name} v{suite.version}: loading splits")
    with distributed.main_first():
        eval_records = {spec.name: suite.load(spec, config.data_root, limit=config.limit) for spec in suite.evaluation}
    timings["data_s"] = time.perf_counter() - t
    torch.manual_seed(config.seed)
    splits, scores, timings["predict_s"], timings["score_s"] = _predict_and_score(model, processor, suite, eval_records, config, run_dir, show_progress)
    splits, averages_ci = fill_intervals(splits, scores)
    timings["total_s"] = time.perf_counter() - t_start
    results = assemble_results(run_dir, config, suite, splits, averages_ci, timings,
                               method=EVAL_METHOD, model=info, batch_size=config.eval_batch_size)
    return publish_results(results, run_dir)
