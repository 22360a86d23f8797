"""The methods on the classification task: what trains, the optimizer, the phases, the end.

Each method is the VQA method of the same name (its parameters, checked by that method's own
class, and its optimizer from :mod:`vqa_ood_bench.optim`) applied to a backbone + linear head:

* ``zeroshot``: no training; needs a zero-shot head (open_clip backbones).
* ``linear-probe``: the head alone; the backbone stays frozen and in eval mode.
* ``vanilla``, ``wise-ft``: every weight; WiSE-FT then interpolates the backbone (and a
  zero-shot-initialised head) toward the pre-trained weights with ``alpha``. A randomly
  initialised head has no pre-trained value worth returning to: it keeps its fine-tuned weights.
* ``l2-sp``, ``mars-sp``, ``tpgm``, ``ftp``, ``digrap``: every weight; the backbone's tensors
  are anchored at their pre-trained values, the new head takes the plain base step (as in the
  TPGM / FTP code, which leave the classifier unconstrained). TPGM learns its radii on batches
  of the suite's validation split.
* ``lp-ft``: the first ``lp_fraction`` of the steps train the head only (backbone frozen, in
  eval mode), then everything (the backbone at ``ft_lr_scale`` times the learning rate).
* ``lp-ft-c`` (DiGraP Tab. 10, "a controlled version of LP-FT, similar to TPGM-C"): LP-FT
  whose fine-tuning phase adds an L2-SP penalty of strength ``reg`` on the backbone's distance
  to its pre-trained weights; ``reg`` is raised until the ID accuracy matches the method being
  compared with. The paper names the strength (reg = 5) but not the regulariser; the L2-SP form
  is this package's reading.

Run-level options every method accepts in ``method_params`` (the run config has no field for
them): ``optimizer`` (``adamw`` or ``sgd``, the base step of every method), ``momentum`` and
``nesterov`` (SGD), ``head_init`` (``auto``: zero-shot where the backbone has a text side,
else random; ``zeroshot``; ``random``) and ``template`` (the zero-shot prompt, with
``{class_name}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..methods.base import as_number, get_method
from ..optim import FTP, L2SP, MARSSP, TPGM, DiGraP
from .backbones import DEFAULT_TEMPLATE

METHODS = ("zeroshot", "vanilla", "linear-probe", "lp-ft", "lp-ft-c", "wise-ft", "l2-sp", "mars-sp", "tpgm", "ftp", "digrap")
ANCHORED = {"l2-sp": L2SP, "mars-sp": MARSSP, "tpgm": TPGM, "ftp": FTP, "digrap": DiGraP}
RUN_PARAMS: dict[str, Any] = {"optimizer": "adamw", "momentum": 0.9, "nesterov": False, "head_init": "auto", "template": DEFAULT_TEMPLATE}
# VQA-only parameters: which of PaliGemma's tied matrices is the head, and a VQA LoRA detail.
_NOT_HERE = {"head"}
LP_FT_C_DEFAULTS = {"reg": 5.0}
HEAD_PREFIX = "head."


@dataclass
class Plan:
    """A method, checked, as the classification loop uses it."""

    name: str
    params: dict[str, Any]  # the method's own parameters
    run: dict[str, Any] = field(default_factory=dict)  # RUN_PARAMS, resolved

    @property
    def trains(self) -> bool:
        return self.name != "zeroshot"

    @property
    def head_only(self) -> bool:
        return self.name == "linear-probe"

    @property
    def phased(self) -> bool:
        return self.name in ("lp-ft", "lp-ft-c")

    def probe_steps(self, total_steps: int) -> int:
        if not self.phased:
            return 0
        return min(total_steps, int(round(float(self.params["lp_fraction"]) * total_steps)))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params, **self.run}


def make_plan(name: str, method_params: dict[str, Any]) -> Plan:
    """The method ``name`` with ``method_params`` checked (a ConfigError names the bad one)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} for image classification; known: {', '.join(METHODS)}, or all")
    run = {k: method_params[k] for k in RUN_PARAMS if k in method_params}
    own = {k: v for k, v in method_params.items() if k not in RUN_PARAMS}
    bad = sorted(set(own) & _NOT_HERE)
    if bad:
        raise ConfigError(f"method {name!r}: parameter {bad[0]!r} is for the VQA task (the classifier's head is its own linear layer)")
    if name == "lp-ft-c":
        reg = as_number(name, "reg", own.pop("reg", LP_FT_C_DEFAULTS["reg"]), float)
        if reg < 0:
            raise ConfigError(f"method 'lp-ft-c': reg must be >= 0, got {reg!r}")
        params = {**{k: v for k, v in get_method("lp-ft", **own).params.items() if k not in _NOT_HERE}, "reg": reg}
    else:
        params = {k: v for k, v in get_method(name, **own).params.items() if k not in _NOT_HERE}
    return Plan(name, params, _check_run(name, {**RUN_PARAMS, **run}))


def _check_run(name: str, run: dict[str, Any]) -> dict[str, Any]:
    if run["optimizer"] not in ("adamw", "sgd"):
        raise ConfigError(f"method {name!r}: optimizer must be adamw or sgd, got {run['optimizer']!r}")
    run["momentum"] = as_number(name, "momentum", run["momentum"], float)
    if not 0.0 <= run["momentum"] < 1.0:
        raise ConfigError(f"method {name!r}: momentum must lie in [0, 1), got {run['momentum']!r}")
    if not isinstance(run["nesterov"], bool):
        raise ConfigError(f"method {name!r}: nesterov must be true or false, got {run['nesterov']!r}")
    if run["head_init"] not in ("auto", "zeroshot", "random"):
        raise ConfigError(f"method {name!r}: head_init must be auto, zeroshot or random, got {run['head_init']!r}")
    if not isinstance(run["template"], str) or "{class_name}" not in run["template"]:
        raise ConfigError(f"method {name!r}: template must be a string containing {{class_name}}, got {run['template']!r}")
    return run


# --- the model ------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """``head(backbone(pixels))``: parameter names start with ``backbone.`` or ``head.``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))


def init_head(model: Classifier, plan: Plan, class_names: list[str]) -> str:
    """Initialise the head as the plan says; returns what was done (``zeroshot`` / ``random``)."""
    want = plan.run["head_init"]
    weights = None
    if want in ("auto", "zeroshot"):
        weights = model.backbone.zero_shot_weights(class_names, plan.run["template"])
        if weights is None and (want == "zeroshot" or plan.name == "zeroshot"):
            raise ConfigError(f"method {plan.name!r}: backbone {model.backbone.name!r} has no zero-shot head (only open_clip backbones do)")
    if plan.name == "zeroshot" and want == "random":
        raise ConfigError("method 'zeroshot' needs head_init zeroshot or auto")
    with torch.no_grad():
        if weights is not None:
            model.head.weight.copy_(weights.to(model.head.weight))
            model.head.bias.zero_()
            return "zeroshot"
        nn.init.normal_(model.head.weight, std=0.01)  # small logits at the start: no class is favoured
        model.head.bias.zero_()
    return "random"


def prepare(model: Classifier, plan: Plan) -> Classifier:
    """Set ``requires_grad``: nothing (zero-shot), the head (linear probe) or everything."""
    for name, p in model.named_parameters():
        p.requires_grad_(plan.trains and (not plan.head_only or name.startswith(HEAD_PREFIX)))
    return model


def backbone_trains(plan: Plan, step: int, total_steps: int) -> bool:
    """Whether the backbone is in train mode (batch-norm statistics move) at ``step`` (0-based)."""
    return plan.trains and not plan.head_only and step >= plan.probe_steps(total_steps)


# --- the optimizer --------------------------------------------------------------------------------

def decay_names(model: nn.Module) -> set[str]:
    """Parameters weight decay applies to: the methods' rule, with batch norm among the norms."""
    from transformers.trainer_pt_utils import get_parameter_names

    from ..methods._common import NO_DECAY_PATTERNS

    norms = [nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm]
    return set(get_parameter_names(model, norms, list(NO_DECAY_PATTERNS)))


def param_groups(model: Classifier, plan: Plan, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Groups by (head or backbone, decay); the backbone anchored at its pre-trained values."""
    decay = decay_names(model)
    scale = float(plan.params.get("ft_lr_scale", 1.0)) if plan.phased else 1.0
    buckets: dict[tuple[bool, bool], list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((name.startswith(HEAD_PREFIX), name in decay), []).append((name, p))
    if not buckets:
        raise ConfigError(f"method {plan.name!r}: nothing to train")
    groups = []
    for (is_head, decays), items in sorted(buckets.items()):
        groups.append({
            "params": [p for _, p in items], "names": [n for n, _ in items],
            "anchor": None if is_head else "pretrained", "weight_decay": weight_decay if decays else 0.0,
            "lr": lr if is_head else lr * scale, "after_probe": plan.phased and not is_head,
        })
    return groups


def build_optimizer(model: Classifier, plan: Plan, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, plan, lr, weight_decay)
    base = plan.run["optimizer"]
    sgd = {"momentum": plan.run["momentum"], "nesterov": plan.run["nesterov"]} if base == "sgd" else {}
    p = plan.params
    if plan.name in ANCHORED or plan.name == "lp-ft-c":
        from ..methods.anchored import want_compile

        if plan.name == "l2-sp":
            return L2SP(groups, lr=lr, base=base, lam=p["lam"], **sgd)
        if plan.name == "lp-ft-c":
            return L2SP(groups, lr=lr, base=base, lam=p["reg"], **sgd)
        if plan.name == "mars-sp":
            return MARSSP(groups, lr=lr, base=base, radius=p["radius"], **sgd)
        if plan.name == "tpgm":
            return TPGM(groups, lr=lr, base=base, norm=p["norm"], gamma_lr=p["gamma_lr"], max_iters=int(p["max_iters"]),
                        project_every=int(p["project_every"]), **sgd)
        method = get_method(plan.name, **{k: v for k, v in p.items()})
        if plan.name == "ftp":
            return FTP(groups, lr=lr, base=base, k=p["k"], mu=p["mu"], compile=want_compile(method, groups), **sgd)
        return DiGraP(groups, lr=lr, base=base, mu=p["mu"], omega=p["omega"], two_sided=p["two_sided"],
                      compile=want_compile(method, groups), **sgd)
    if base == "sgd":
        return torch.optim.SGD(groups, lr=lr, **sgd)
    return torch.optim.AdamW(groups, lr=lr)


def silence_body_during_probe(optimizer: torch.optim.Optimizer) -> None:
    """Drop the backbone's gradients before a probing step: no update, no decay, no state."""
    for group in optimizer.param_groups:
        if group.get("after_probe"):
            for p in group["params"]:
                p.grad = None


def finalize(model: Classifier, plan: Plan, pretrained: dict[str, torch.Tensor], head_init: str) -> Classifier:
    """WiSE-FT's interpolation toward the pre-trained weights; other methods: as trained."""
    if plan.name != "wise-ft":
        return model
    alpha = float(plan.params["alpha"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(HEAD_PREFIX) and head_init != "zeroshot":
                continue  # a random head has no pre-trained value to return to
            p.copy_(torch.lerp(pretrained[name].to(p), p, alpha))
    return model


StepHook = Callable[[nn.Module, int], None]


def omega_logger(plan: Plan, optimizer: torch.optim.Optimizer, run_dir, *, resumed: bool, epoch_of: Callable[[int], Optional[float]]) -> Optional[StepHook]:
    """DiGraP's per-step omega log (``omega.jsonl``), as the VQA runs write it."""
    from ..methods.omega_log import OMEGA_FILE, OmegaLog

    if plan.name != "digrap" or run_dir is None or int(plan.params["log_every"]) == 0:
        return None
    log = OmegaLog(run_dir / OMEGA_FILE)
    if not resumed:
        log.start()
    every = int(plan.params["log_every"])

    def hook(model, step: int) -> None:
        if step % every == 0 or step == 1:
            log.append(step, epoch_of(step), optimizer.omegas())

    return hook
