"""The methods that keep the fine-tuned weights near the pre-trained ones, on :mod:`vqa_ood_bench.optim`.

Every tensor is anchored: to its pre-trained value in full fine-tuning, to the origin for LoRA
factors (for an adapter the distance to the pre-trained model is the adapter itself). The base
step is AdamW with the run's learning rate and weight decay (no decay on biases and norms), as
for vanilla fine-tuning, so each method differs from vanilla only by its regulariser.

Defaults: the DiGraP paper's where it gives one (DiGraP μ = 0.5 for VQA, Tab. 3), the authors'
for FTP (k = 1, μ = 1e-2) and TPGM (radius learning rate 1e-2); the L2-SP strength and the
MARS-SP radius are cross-validated in the papers, our defaults are the optimizers' (λ = 1e-2,
radius 1).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError
from ..optim import FTP, L2SP, MARSSP, TPGM, DiGraP
from ._common import anchored_param_groups, is_main_process
from .base import Method, MethodContext, register_method
from .omega_log import OMEGA_FILE, OmegaLog


class AnchoredMethod(Method):
    """A method whose optimizer is one of :mod:`vqa_ood_bench.optim`, built over anchored groups."""

    #: method parameters passed through to the optimizer's constructor
    optimizer_params: tuple[str, ...] = ()

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.optimizer: Optional[torch.optim.Optimizer] = None  # the one built for the current run

    def make_optimizer(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def check(self, config):
        super().check(config)
        if "compile" in self.params:
            compile_setting(self)  # a bad value fails before the model is loaded

    def optimizer_factory(self, ctx: MethodContext):
        def build(model, total_steps: int) -> torch.optim.Optimizer:
            kwargs = {k: self.params[k] for k in self.optimizer_params}
            self.optimizer = self.make_optimizer(anchored_param_groups(model, ctx, **kwargs), ctx.config.train.learning_rate)
            return self.optimizer

        return build


#: ``compile: auto`` compiles the optimizer's kernels from this many trainable elements on: the
#: compile (seconds per distinct tensor shape) pays for itself on real models, not on the tiny
#: embedded one (full fine-tuning: 1.3 M elements, 9 shapes, ~3 s of compiling to save ~5 ms a step)
AUTO_COMPILE_NUMEL = 20_000_000


def compile_setting(method: Method) -> Optional[bool]:
    """The method's ``compile`` parameter: True, False or None for ``auto``."""
    value = method.params["compile"]
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key == "auto":
        return None
    if key in ("true", "yes", "1"):
        return True
    if key in ("false", "no", "0"):
        return False
    raise ConfigError(f"method {method.name!r}: compile must be true, false or auto, got {value!r}")


def want_compile(method: Method, groups: list[dict[str, Any]]) -> bool:
    """Whether to compile the optimizer's kernels (``auto``: by the number of trainable elements)."""
    setting = compile_setting(method)
    if setting is None:
        return sum(p.numel() for g in groups for p in g["params"]) >= AUTO_COMPILE_NUMEL
    return setting


@register_method
class L2SPMethod(AnchoredMethod):
    name = "l2-sp"
    defaults = {"lam": 1e-2}
    optimizer_params = ("lam",)
    description = "AdamW on the loss plus (lam/2)·|θ − θ0|² (under LoRA the anchor is 0: a coupled L2 on the adapter)"

    def make_optimizer(self, groups, lr):
        return L2SP(groups, lr=lr, base="adamw")


@register_method
class MARSSPMethod(AnchoredMethod):
    name = "mars-sp"
    defaults = {"radius": 1.0}
    optimizer_params = ("radius",)
    description = "AdamW, then every row of θ − θ0 projected into an L1 ball of the given radius (MARS norm)"

    def make_optimizer(self, groups, lr):
        return MARSSP(groups, lr=lr, base="adamw")


@register_method
class FTPMethod(AnchoredMethod):
    name = "ftp"
    defaults = {"k": 1.0, "mu": 1e-2, "compile": "auto"}
    optimizer_params = ("k", "mu")
    description = "fast trainable projection: per-tensor learned MARS radius around θ0 (Tian et al. 2023)"

    def make_optimizer(self, groups, lr):
        return FTP(groups, lr=lr, base="adamw", compile=want_compile(self, groups))


@register_method
class DiGraPMethod(AnchoredMethod):
    name = "digrap"
    defaults = {"mu": 0.5, "omega": None, "two_sided": None, "log_every": 1, "compile": "auto"}
    optimizer_params = ("mu", "omega", "two_sided")
    optional_numbers = ("omega", "two_sided")
    description = "directional gradient projection with a learned strength ω per tensor; ω is logged to omega.jsonl"

    def __init__(self, **params: Any):
        super().__init__(**params)
        if int(self.params["log_every"]) < 0:
            raise ConfigError(f"method {self.name!r}: log_every must be >= 0 (0: no omega log), got {self.params['log_every']!r}")

    def make_optimizer(self, groups, lr):
        return DiGraP(groups, lr=lr, base="adamw", compile=want_compile(self, groups))

    def optimizer_factory(self, ctx):
        build = super().optimizer_factory(ctx)

        def build_and_start_log(model, total_steps):
            opt = build(model, total_steps)
            # log rows in the model's order (the optimizer's groups are sorted by anchor and decay)
            self._model_order = [n for n, p in model.named_parameters() if p.requires_grad]
            log = self._log(ctx)
            if log is not None and not _resumable(ctx):
                log.start()  # a fresh training run; a resumed one appends (the reader keeps the last line per step)
            return opt

        return build_and_start_log

    def _log(self, ctx: MethodContext) -> Optional[OmegaLog]:
        if ctx.run_dir is None or int(self.params["log_every"]) == 0 or not is_main_process():
            return None
        return OmegaLog(ctx.run_dir / OMEGA_FILE)

    def step_hooks(self, ctx):
        log = self._log(ctx)
        if log is None:
            return []
        every = int(self.params["log_every"])
        epoch_of = _epoch_converter(ctx)

        def log_omega(model, step: int) -> None:
            if self.optimizer is not None and (step % every == 0 or step == 1):
                omegas = self.optimizer.omegas()
                order = getattr(self, "_model_order", None) or list(omegas)
                log.append(step, epoch_of(step), {n: omegas[n] for n in order if n in omegas})

        return [log_omega]


def _resumable(ctx: MethodContext) -> bool:
    """Whether training may continue from a Trainer checkpoint in the run folder."""
    folder = ctx.run_dir / "checkpoints" if ctx.run_dir is not None else None
    return folder is not None and any((c / "trainer_state.json").is_file() for c in folder.glob("checkpoint-*"))


def _epoch_converter(ctx: MethodContext) -> Callable[[int], Optional[float]]:
    """step → fractional epoch (the Trainer's notion), or None when the data size is unknown."""
    if not ctx.train_size:
        return lambda step: None
    per_step = ctx.config.train.batch_size * ctx.config.train.grad_accum  # global batch (the engine splits it over processes)
    return lambda step: step * per_step / ctx.train_size


@register_method
class TPGMMethod(AnchoredMethod):
    name = "tpgm"
    defaults = {"norm": "l2", "gamma_lr": 1e-2, "max_iters": 1, "project_every": 1, "val_batch_size": 0}
    optimizer_params = ()
    description = "trainable projected gradient method: per-tensor radii learned on validation batches (Tian et al. 2023)"

    def make_optimizer(self, groups, lr):
        p = self.params
        return TPGM(groups, lr=lr, base="adamw", norm=p["norm"], gamma_lr=p["gamma_lr"],
                    max_iters=int(p["max_iters"]), project_every=int(p["project_every"]))

    def check(self, config):
        super().check(config)
        if int(self.params["val_batch_size"]) < 0:
            raise ConfigError(f"method {self.name!r}: val_batch_size must be >= 0 (0: the training batch size)")

    def step_hooks(self, ctx):
        batches = _ValidationBatches(ctx, int(self.params["val_batch_size"]) or ctx.config.train.batch_size)

        def project(model, step: int) -> None:
            opt = self.optimizer
            if opt is None or not opt.due():
                return
            batch = batches.next(model)
            opt.project(lambda: _backward_loss(model, batch))

        return [project]


def _backward_loss(model, batch) -> torch.Tensor:
    """TPGM's validation closure: the loss on ``batch`` in eval mode (dropout off), backpropagated.

    The TPGM authors compute the radius-learning loss on a copy of the model put in ``eval()``
    (``TPGM.forward`` in their ``utils/tpgm.py``), so the radii see the deterministic network that
    is evaluated, not one with dropout noise (LoRA dropout in the paper recipe). Every module's
    own mode is restored afterwards, also when the forward or backward pass raises, so training
    resumes exactly as it was (modules frozen in eval mode stay so).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        loss = model(**batch).loss
        loss.backward()
    finally:
        for m, training in modes:
            m.training = training
    return loss


class _ValidationBatches:
    """Batches of the suite's validation split, cycled, for TPGM's radius learning.

    TPGM learns its radii on held-out data; we use the suite's validation split (the one model
    selection also uses), loaded on first use.
    """

    def __init__(self, ctx: MethodContext, batch_size: int):
        self.ctx = ctx
        self.batch_size = batch_size
        self.examples = None
        self.collate = None
        self.pos = 0

    def _load(self) -> None:
        from ..data.suite import get_suite
        from ..runner import records_to_examples
        from ..train.engine import VQACollator

        cfg = self.ctx.config
        if self.ctx.processor is None:
            raise ConfigError("tpgm needs the model's processor to build validation batches")
        suite = get_suite(cfg.suite)
        records = suite.load(suite.validation, cfg.data_root, limit=cfg.train.validation_size or None)
        dataset = records_to_examples(records, cfg.prompt)
        self.examples = [dataset[i] for i in range(len(dataset))]
        if not self.examples:
            raise ConfigError(f"tpgm: suite {cfg.suite!r} has no validation examples to learn the projection radii on")
        self.collate = VQACollator(self.ctx.processor)

    def next(self, model) -> dict[str, torch.Tensor]:
        if self.examples is None:
            self._load()
        n = len(self.examples)
        take = [self.examples[(self.pos + i) % n] for i in range(min(self.batch_size, n))]
        self.pos = (self.pos + len(take)) % n
        batch = self.collate(take)
        ref = next(model.parameters())
        return {k: (v.to(ref.device, ref.dtype) if v.is_floating_point() else v.to(ref.device)) for k, v in batch.items()}
