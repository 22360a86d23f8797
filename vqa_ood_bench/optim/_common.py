"""Shared pieces of the anchored optimizers: parameter groups, the plain base step, the
bucketed state layout and the state-dict hooks.

Parameter groups
----------------
Every optimizer here accepts what ``torch.optim`` accepts -- an iterable of tensors, of
``(name, tensor)`` pairs (``model.named_parameters()``), or of group dicts -- plus two
robust-fine-tuning options per group:

``anchor``
    ``"pretrained"``: the anchor ``theta0`` is a copy of the tensor taken when the optimizer
    is built (full fine-tuning); ``"origin"``: the anchor is zero and nothing is copied
    (adapter weights such as LoRA A/B, whose distance to the pre-trained model is the adapter
    itself); ``None``: the group takes the plain base step (e.g. a new head).

``names``
    optional list of parameter names, one per tensor (``model.named_parameters()`` input
    sets them too); used by ``exclude`` and as keys of the per-tensor readouts.

``exclude`` (constructor argument)
    regular expressions matched (``re.search``) against parameter names; matching tensors are
    moved into a group of their own with ``anchor=None``. Needs named parameters.

:func:`param_groups_from_model` builds the same groups from a module.

Bucketed layout (the fast path of DiGraP and FTP)
-------------------------------------------------
A tensor is processed as ``(rows, cols)``: rows along dim 0, the rest flattened; 1-D and 0-d
tensors are one row. DiGraP takes a tensor of three or more dimensions as ``(d0, d1, rest)``
instead, its rows running along dim 1 (see :func:`block_dims`). Large tensors
(``numel >= BUCKET_NUMEL``) are processed in place, one kernel call each. Small tensors of
identical shape (biases, norms, LoRA factors) share a *bucket*: their optimizer state lives in
one ``(n, rows, cols)`` buffer (per-parameter state
entries are views of it), and each step copies their gradients and weights into two
bucket-sized workspaces with one ``torch._foreach_copy_``, so a single kernel call serves
hundreds of tensors. Buckets of short rows (``cols < 16``, e.g. LoRA B of shape ``(d, r)``)
are stored transposed so that the row reductions vectorise.

Per-tensor scalar state (step, learned strength or radius and its Adam moments, ...) lives in
one vector per group and device; ``optimizer.state[p]`` holds 0-d views of it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim.adam import adam as adam_functional
from torch.optim.sgd import sgd as sgd_functional

from ..errors import ConfigError

__all__ = [
    "ANCHORS",
    "BASES",
    "BUCKET_NUMEL",
    "param_groups_from_model",
]

ANCHORS = ("pretrained", "origin", None)
BASES = ("adam", "adamw", "sgd")

#: tensors with fewer elements than this are processed in shared buckets.
BUCKET_NUMEL = 1 << 16
#: buckets whose rows are shorter than this are stored transposed.
SHORT_ROW = 16


# --------------------------------------------------------------------------------------------
# parameter groups
# --------------------------------------------------------------------------------------------


def param_groups_from_model(
    model: nn.Module,
    *,
    exclude: Sequence[str] = (),
    anchor: str | None = "pretrained",
    **options: Any,
) -> list[dict[str, Any]]:
    """Named parameter groups for an anchored optimizer.

    Only tensors with ``requires_grad`` are included. Tensors whose name matches one of the
    ``exclude`` regular expressions (``re.search``) form a second group with ``anchor=None``
    (plain base step); the others get ``anchor`` and ``options``. Empty groups are dropped.
    """
    _check_anchor(anchor)
    pats = [re.compile(p) for p in exclude]
    kept: list[tuple[str, Tensor]] = []
    excl: list[tuple[str, Tensor]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (excl if any(r.search(name) for r in pats) else kept).append((name, p))
    groups: list[dict[str, Any]] = []
    if kept:
        groups.append({"params": kept, "anchor": anchor, **options})
    if excl:
        groups.append({"params": excl, "anchor": None})
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return groups


def _check_anchor(anchor: Any) -> None:
    if anchor not in ANCHORS:
        raise ConfigError(f"anchor must be one of {ANCHORS}, got {anchor!r}")


def split_param_groups(params: Any, exclude: Sequence[str]) -> list[dict[str, Any]]:
    """Normalise optimizer input to a list of group dicts; apply ``exclude`` by name."""
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts")
    items = list(params)
    if not items:
        raise ConfigError("optimizer got an empty parameter list")
    groups = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
    for g in groups:
        ps = g["params"]
        g["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        names = g.pop("names", None)
        if names is not None:  # our spelling of torch's named parameters
            names = list(names)
            if len(names) != len(g["params"]):
                raise ConfigError(f"a group has {len(g['params'])} params but {len(names)} names")
            g["params"] = list(zip(names, g["params"]))
        if "anchor" in g:
            _check_anchor(g["anchor"])
    if not exclude:
        return groups
    pats = [re.compile(p) for p in exclude]
    out: list[dict[str, Any]] = []
    excluded: list[Any] = []
    for g in groups:
        keep = []
        for item in g["params"]:
            if not isinstance(item, tuple):
                raise ConfigError("exclude= needs named parameters, e.g. model.named_parameters()")
            (excluded if any(r.search(item[0]) for r in pats) else keep).append(item)
        if keep:
            out.append({**g, "params": keep})
    if excluded:
        out.append({"params": excluded, "anchor": None})
    if not out:
        raise ConfigError("every parameter was excluded")
    return out


def check_base_hparams(base: str, defaults: dict[str, Any]) -> None:
    _check_anchor(defaults.get("anchor"))
    if base not in BASES:
        raise ConfigError(f"base must be one of {BASES}, got {base!r}")
    lr = defaults["lr"]
    if not isinstance(lr, (int, float)) or lr < 0:
        raise ConfigError(f"invalid learning rate {lr!r} (a float tensor lr is not supported)")
    if defaults["weight_decay"] < 0:
        raise ConfigError(f"invalid weight_decay {defaults['weight_decay']!r}")
    if base == "sgd":
        if defaults["momentum"] < 0 or defaults["dampening"] < 0:
            raise ConfigError("momentum and dampening must be >= 0")
        if defaults["nesterov"] and (defaults["momentum"] <= 0 or defaults["dampening"] != 0):
            raise ConfigError("Nesterov momentum needs momentum > 0 and dampening 0")
    else:
        b1, b2 = defaults["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ConfigError(f"invalid betas {defaults['betas']!r}")
        if defaults["eps"] < 0:
            raise ConfigError(f"invalid eps {defaults['eps']!r}")


def check_group_tensors(group: dict[str, Any]) -> None:
    for p in group["params"]:
        if p.is_complex() or not p.is_floating_point():
            raise ConfigError("only real floating-point parameters are supported")


def param_name(group: dict[str, Any], i: int, flat_index: int) -> str | int:
    names = group.get("param_names")
    return names[i] if names is not None else flat_index


def anchored_params(param_groups: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str | int, Tensor]]:
    """``(group, name or flat index, tensor)`` of every tensor that has an anchor.

    The flat index is the tensor's position across all groups (as in ``state_dict()``), so
    keys stay stable when a group has ``anchor=None``.
    """
    flat = 0
    for group in param_groups:
        if group["anchor"] is not None:
            for i, p in enumerate(group["params"]):
                yield group, param_name(group, i, flat + i), p
        flat += len(group["params"])


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of ``optimizer.state`` tensors, each storage counted once (bucketed state entries
    are views of one shared buffer). Works for any torch optimizer."""
    total = 0
    seen: set[int] = set()
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                key = v.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def scalar_dtype(fused: bool) -> torch.dtype:
    """dtype of ``state['step']``, as torch.optim uses it."""
    return torch.float32 if fused else torch.get_default_dtype()


# --------------------------------------------------------------------------------------------
# the plain base step (torch.optim semantics, bit for bit)
# --------------------------------------------------------------------------------------------


def init_plain_state(state: dict[str, Any], p: Tensor, base: str, fused: bool) -> None:
    if "momentum_buffer" in state or "exp_avg" in state:  # (an anchor may already be there)
        return
    if base == "sgd":
        state["momentum_buffer"] = None
    else:
        state["step"] = torch.zeros((), dtype=scalar_dtype(fused), device=p.device if fused else "cpu")
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def plain_step(
    base: str,
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    foreach: bool | None,
    fused: bool | None,
) -> None:
    """One torch.optim.Adam / AdamW / SGD step through torch's functional API."""
    if not params:
        return
    if base == "sgd":
        bufs = [s.get("momentum_buffer") for s in states]
        sgd_functional(
            params,
            grads,
            bufs,
            foreach=foreach,
            fused=fused,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=False,
        )
        if group["momentum"] != 0:
            for s, b in zip(states, bufs):
                s["momentum_buffer"] = b
        return
    b1, b2 = group["betas"]
    for s, p in zip(states, params):
        # A state_dict load carries per-tensor scalars as Python floats (see scalars_to_python);
        # torch's Adam wants its step counter as a singleton tensor again.
        if not isinstance(s["step"], Tensor):
            s["step"] = torch.tensor(float(s["step"]), dtype=scalar_dtype(bool(fused)), device=p.device if fused else "cpu")
    adam_functional(
        params,
        grads,
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [],
        [s["step"] for s in states],
        foreach=foreach,
        fused=fused,
        decoupled_weight_decay=(base == "adamw"),
        amsgrad=False,
        beta1=b1,
        beta2=b2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (``step`` runs under ``no_grad``); ``None`` if none."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def collect_grads(params: Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    ps, gs = [], []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise ConfigError("sparse gradients are not supported")
        ps.append(p)
        gs.append(p.grad)
    return ps, gs


def bias_correction(beta: float, t: Tensor) -> Tensor:
    """``1 - beta**t`` in ``t``'s dtype, computed in float64 as torch's Adam does in Python: in
    float32, ``1 - 0.999**1`` comes out 1.3e-5 (relative) below 0.001."""
    return (1.0 - torch.pow(beta, t.double())).to(t.dtype)


def scalar_adam(
    x: Tensor,
    m: Tensor,
    v: Tensor,
    grad: Tensor,
    t: Tensor,
    lr: float | Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """Vectorised Adam on per-tensor scalars: returns ``(x_new, m_new, v_new)``.

    ``t`` is the step being taken (>= 1), used for the bias corrections.
    """
    b1, b2 = betas
    m = m * b1 + grad * (1.0 - b1)
    v = v * b2 + grad * grad * (1.0 - b2)
    mhat = m / bias_correction(b1, t)
    vhat = v / bias_correction(b2, t)
    return x - lr * mhat / (torch.sqrt(vhat) + eps), m, v


# --------------------------------------------------------------------------------------------
# bucketed layout
# --------------------------------------------------------------------------------------------


def block_dims(shape: torch.Size, split_dim1: bool) -> tuple[int, ...]:
    """A tensor of ``shape`` as its row block (without the bucket dimension): ``(rows, cols)``
    with rows along dim 0 and the rest flattened (a 0-d or 1-D tensor is one row); with
    ``split_dim1``, a tensor of three or more dimensions is ``(d0, d1, rest)`` and its rows are
    the vectors along dim 1, one per index of the other dimensions (``F.normalize(t, dim=1)``'s
    vectors: for a conv kernel ``(out, in, kh, kw)``, one per output channel and position)."""
    if len(shape) <= 1:
        return 1, int(math.prod(shape))
    rest = int(math.prod(shape[2:]))
    if split_dim1 and rest > 1:
        return int(shape[0]), int(shape[1]), rest
    return int(shape[0]), int(shape[1]) * rest


@dataclass
class Bucket:
    """Tensors of one shape/dtype/device, or one large tensor processed in place."""

    slots: range  # positions in the layout's scalar vectors
    params: list[Tensor]
    shape: torch.Size
    dims: tuple[int, ...]  # a member's row block (see block_dims): (rows, cols) or (d0, d1, rest)
    transposed: bool  # (rows, cols) stored as (n, cols, rows); reduce over dim 1 instead of 2
    direct: bool  # one large tensor, kernels run on the parameter itself
    bufs: dict[str, Tensor] = field(default_factory=dict)  # name -> (n, *block())
    gwork: Tensor | None = None
    pwork: Tensor | None = None
    # parameter-shaped views of the members' workspace slices, made once: building views per
    # member on every step cost about as much as the kernels for a few hundred LoRA factors
    gviews: list[Tensor] = field(default_factory=list)
    pviews: list[Tensor] = field(default_factory=list)
    # transposed buckets: parameter-shaped views of ``gwork`` read as ``(n, rows, cols)``, the
    # scratch through which updated weights go back (faster than a strided copy per member)
    scratch_views: list[Tensor] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.params)

    @property
    def rows(self) -> int:
        """Size of the block's dim 0 (the tensor's dim 0; row blocks cut along it)."""
        return self.dims[0]

    @property
    def cols(self) -> int:
        return int(math.prod(self.dims[1:]))

    @property
    def red_dim(self) -> int:
        """The dimension of an ``(n, ...)`` block that runs along a row."""
        return 1 if self.transposed else 2

    def block(self) -> tuple[int, ...]:
        """A member's stored block shape."""
        return (self.cols, self.rows) if self.transposed else self.dims

    def as_param(self, t: Tensor) -> Tensor:
        """A per-member block viewed with the parameter's shape."""
        return t.t() if self.transposed else t.view(self.shape)

    def from_param(self, t: Tensor) -> Tensor:
        """A parameter-shaped tensor viewed as ``(1, *block)`` (no copy for contiguous ``t``)."""
        return (t.t() if self.transposed else t).reshape(1, *self.block())

    def views_of(self, buf: Tensor) -> list[Tensor]:
        """Parameter-shaped views of the members' slices of an ``(n, *block)`` buffer."""
        return [self.as_param(buf[j]) for j in range(self.n)]

    def member_views(self, name: str) -> list[Tensor]:
        return self.views_of(self.bufs[name])


@dataclass
class Gathered:
    """One step's inputs of a layout: per bucket ``(g, p, active members)`` or ``None``."""

    blocks: list[tuple[Tensor, Tensor, list[int]] | None]
    active: Tensor  # (n,) bool on the layout's device: the tensor has a gradient this step
    any_idle: bool  # some tensor has no gradient (its per-tensor scalars must not move)


class Layout:
    """Buckets and per-tensor scalar vectors of one parameter group on one device."""

    def __init__(
        self,
        params: list[Tensor],
        buf_names: Sequence[str],
        scalar_names: Sequence[str],
        anchor: str,
        state: dict[Tensor, dict[str, Any]],
        *,
        split_dim1: bool = False,
        bucket_numel: int = BUCKET_NUMEL,
    ):
        self.params = list(params)
        self.buf_names = list(buf_names)
        self.scalar_names = list(scalar_names)
        self.anchor = anchor
        self.device = params[0].device
        self.sdtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        self.buckets: list[Bucket] = []
        self.slot_of: dict[Tensor, int] = {}
        self.steps_taken = 0

        # group small tensors by (shape, dtype); big or non-contiguous-free tensors go direct
        small: dict[tuple, list[Tensor]] = defaultdict(list)
        order: list[tuple[str, Any]] = []
        for p in self.params:
            if p.numel() >= bucket_numel and p.is_contiguous():
                order.append(("direct", p))
            else:
                key = (tuple(p.shape), p.dtype)
                if key not in small:
                    order.append(("bucket", key))
                small[key].append(p)
        slot = 0
        for kind, item in order:
            members = [item] if kind == "direct" else small[item]
            shape = members[0].shape
            dims = block_dims(shape, split_dim1)
            transposed = kind == "bucket" and len(shape) == 2 and dims[1] < SHORT_ROW and dims[0] > dims[1]
            b = Bucket(range(slot, slot + len(members)), members, shape, dims, transposed, kind == "direct")
            for j, p in enumerate(members):
                self.slot_of[p] = slot + j
            slot += len(members)
            self.buckets.append(b)
        self.n = slot
        self.scalars: dict[str, Tensor] = {}
        self._allocate(state)

    # ---- allocation / (re)binding of state ------------------------------------------------

    def _allocate(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Allocate buffers, fill them from ``state`` where present, bind views into ``state``."""
        dev = self.device
        for name in self.scalar_names:
            vec = torch.zeros(self.n, dtype=self.sdtype, device=dev)
            for p, s in self._slot_items():
                if name in state[p]:
                    vec[s] = float(state[p][name])
            self.scalars[name] = vec
        for b in self.buckets:
            block = b.block()
            for name in self.buf_names:
                if b.direct:
                    p = b.params[0]
                    old = state[p].get(name)
                    if old is not None:
                        t = old.detach().to(device=dev, dtype=p.dtype).clone(memory_format=torch.contiguous_format)
                    elif name == "anchor":
                        t = p.detach().clone(memory_format=torch.contiguous_format)
                    else:
                        t = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    b.bufs[name] = b.from_param(t)
                else:
                    buf = torch.zeros((b.n, *block), dtype=b.params[0].dtype, device=dev)
                    for j, (p, view) in enumerate(zip(b.params, b.views_of(buf))):
                        old = state[p].get(name)
                        if old is not None:
                            view.copy_(old.detach())
                        elif name == "anchor":
                            view.copy_(p.detach())
                    b.bufs[name] = buf
            if not b.direct:
                b.gwork = torch.zeros((b.n, *block), dtype=b.params[0].dtype, device=dev)
                b.pwork = torch.zeros((b.n, *block), dtype=b.params[0].dtype, device=dev)
                b.gviews = b.views_of(b.gwork)
                b.pviews = b.views_of(b.pwork)
                if b.transposed:
                    b.scratch_views = [t.view(b.shape) for t in b.gwork.view(b.n, b.rows, b.cols).unbind(0)]
        self.bind(state)
        steps = self.scalars.get("step")
        self.steps_taken = int(steps.max().item()) if steps is not None and self.n else 0

    def bind(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Point ``state[p][...]`` at views of the layout's buffers."""
        for b in self.buckets:
            views = {name: b.member_views(name) for name in self.buf_names}
            for j, p in enumerate(b.params):
                st = state[p]
                for name in self.buf_names:
                    st[name] = views[name][j]
                s = b.slots[j]
                for name in self.scalar_names:
                    st[name] = self.scalars[name][s]

    def _slot_items(self) -> Iterable[tuple[Tensor, int]]:
        for b in self.buckets:
            for j, p in enumerate(b.params):
                yield p, b.slots[j]

    def workspace_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for b in self.buckets
            for t in (b.gwork, b.pwork)
            if t is not None
        )

    # ---- per-step gathering ---------------------------------------------------------------

    def gather_all(self) -> Gathered | None:
        """:meth:`gather` every bucket; ``None`` when no tensor of the layout has a gradient."""
        blocks = [self.gather(b) for b in self.buckets]
        if all(x is None for x in blocks):
            return None
        flags = [p.grad is not None for b in self.buckets for p in b.params]
        return Gathered(blocks, torch.tensor(flags, dtype=torch.bool).to(self.device), not all(flags))

    def commit(self, step: Gathered, new: dict[str, Tensor]) -> None:
        """Store the per-tensor scalars computed by a step (tensors without a gradient keep
        theirs) and count the step."""
        for name, value in new.items():
            old = self.scalars[name]
            old.copy_(torch.where(step.active, value, old) if step.any_idle else value)
        self.steps_taken += 1

    def gather(self, b: Bucket) -> tuple[Tensor, Tensor, list[int]] | None:
        """``(g, p, active members)`` as ``(n, *block)`` blocks; ``None`` when no member has a gradient."""
        act = [j for j, p in enumerate(b.params) if p.grad is not None]
        if not act:
            return None
        if b.direct:
            p = b.params[0]
            return b.from_param(p.grad), b.from_param(p.detach()), act
        assert b.gwork is not None and b.pwork is not None
        gv, pv = b.gviews, b.pviews
        # (the step runs under no_grad: parameters are copied from/to without detach())
        torch._foreach_copy_(pv, b.params)
        if len(act) == b.n:
            torch._foreach_copy_(gv, [p.grad for p in b.params])
        else:
            torch._foreach_copy_([gv[j] for j in act], [b.params[j].grad for j in act])
            active = set(act)
            torch._foreach_zero_([gv[j] for j in range(b.n) if j not in active])
        return b.gwork, b.pwork, act

    def scatter(self, b: Bucket, act: list[int]) -> None:
        """Copy updated weights of the active members back into the parameters (uses the
        gradient workspace as scratch for transposed buckets: call after the last kernel)."""
        if b.direct:
            return
        pv = b.pviews
        if b.transposed:
            assert b.gwork is not None and b.pwork is not None
            b.gwork.view(b.n, b.rows, b.cols).copy_(b.pwork.transpose(1, 2))
            pv = b.scratch_views
        if len(act) == b.n:
            torch._foreach_copy_(b.params, pv)
        else:
            torch._foreach_copy_([b.params[j] for j in act], [pv[j] for j in act])


# --------------------------------------------------------------------------------------------
# state_dict support for layout-backed optimizers
# --------------------------------------------------------------------------------------------


def scalars_to_python(state_dict: dict[str, Any], scalar_names: Sequence[str]) -> dict[str, Any]:
    """Load pre-hook: carry per-tensor scalars as Python floats so that
    ``Optimizer.load_state_dict`` does not cast them to the parameter dtype (bfloat16 would
    round a learned strength or its Adam moments)."""
    names = set(scalar_names)
    new_state = {}
    for k, st in state_dict["state"].items():
        if isinstance(st, dict):
            st = {
                n: (float(v) if n in names and isinstance(v, Tensor) and v.numel() == 1 else v)
                for n, v in st.items()
            }
        new_state[k] = st
    state_dict = dict(state_dict)
    state_dict["state"] = new_state
    return state_dict
