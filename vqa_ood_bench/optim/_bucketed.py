"""The frame of the optimizers that run fused kernels over bucketed state (DiGraP, FTP).

Per group and device a :class:`._common.Layout` holds the state of the tensors that the
method changes; groups without one (``anchor=None``, or the method switched off) take torch's
plain step. A subclass names its per-tensor scalars and state buffers, says which groups it
changes, and implements one step of one layout.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor

from . import _kernels as K
from ._base import RobustOptimizer
from ._common import Bucket, Gathered, Layout, anchored_params, collect_grads, run_closure, scalars_to_python

#: eager kernels on the CPU run on row blocks of about this many elements (see _row_blocks)
EAGER_BLOCK_NUMEL = 1 << 17


class BucketedBase(RobustOptimizer):
    """Layouts per group and device, their state-dict hooks, the step over them."""

    #: the per-tensor scalars each layout keeps, a named tuple of ``(n,)`` vectors whose field
    #: names are the keys in ``optimizer.state[p]`` (subclasses set this)
    Scalars: type[tuple] = tuple
    scalar_names: tuple[str, ...] = ()
    #: rows of tensors with 3+ dimensions along dim 1 instead of dim 0 flattened (see
    #: :func:`._common.block_dims`), as the method's authors take them
    split_dim1: bool = False

    def __init__(self, params: Any, defaults: dict[str, Any], *, compile: bool, **options: Any):
        self._compile = bool(compile)
        super().__init__(params, defaults, **options)

    def _setup(self) -> None:
        self._layouts: list[dict[torch.device, Layout]] | None = None
        self._build_layouts()
        self.register_load_state_dict_pre_hook(lambda opt, sd: scalars_to_python(sd, opt.scalar_names))
        self.register_load_state_dict_post_hook(lambda opt: opt._build_layouts())

    # ---- layout (subclass hooks first) ---------------------------------------------------

    def _projects(self, group: dict[str, Any]) -> bool:
        """Whether the method changes this group's step (else: torch's plain step)."""
        return group["anchor"] is not None

    def _buf_names(self, group: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def _new_layout(self, group: dict[str, Any], params: list[Tensor]) -> Layout:
        return Layout(params, self._buf_names(group), self.scalar_names, group["anchor"], self.state,
                      split_dim1=self.split_dim1)

    def _build_layouts(self) -> None:
        layouts: list[dict[torch.device, Layout]] = []
        for group in self.param_groups:
            per_dev: dict[torch.device, Layout] = {}
            if self._projects(group):
                by_dev: dict[torch.device, list[Tensor]] = {}
                for p in group["params"]:
                    by_dev.setdefault(p.device, []).append(p)
                for dev, ps in by_dev.items():
                    per_dev[dev] = self._new_layout(group, ps)
            layouts.append(per_dev)
        self._layouts = layouts

    def _current_layouts(self) -> list[dict[torch.device, Layout]]:
        if self._layouts is None:
            self._build_layouts()
        assert self._layouts is not None
        return self._layouts

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_layouts" not in self.__dict__:  # unpickled / deep-copied: rebuild lazily
            self._layouts = None

    # ---- readouts ------------------------------------------------------------------------

    def _scalar_readout(self, name: str) -> dict[str | int, float]:
        """Per-tensor scalar ``name`` of every anchored tensor, keyed by name or flat
        position; tensors of groups the method leaves alone read 0.0."""
        values: dict[Tensor, float] = {}
        for per_dev in self._current_layouts():
            for lay in per_dev.values():
                column = lay.scalars[name].tolist()
                for p, s in lay.slot_of.items():
                    values[p] = column[s]
        return {key: values.get(p, 0.0) for _group, key, p in anchored_params(self.param_groups)}

    def workspace_bytes(self) -> int:
        """Bytes of the persistent workspaces of bucketed small tensors (not state)."""
        if self._layouts is None:
            return 0
        return sum(lay.workspace_bytes() for per in self._layouts for lay in per.values())

    # ---- step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = run_closure(closure)
        with K.recompile_scope() if self._compile else contextlib.nullcontext():
            for group, per_dev in zip(self.param_groups, self._current_layouts()):
                if not per_dev:
                    params, grads = collect_grads(group["params"])
                    self.base_step(group, params, grads)
                    continue
                for lay in per_dev.values():
                    step = lay.gather_all()
                    if step is not None:  # else no tensor of the layout has a gradient
                        self._step_layout(group, lay, step)
        return loss

    def _row_blocks(self, b: Bucket) -> list[slice]:
        """Row ranges the kernels of bucket ``b`` run on, one call each.

        Compiled kernels make one sweep and take the whole tensor. The eager kernels make
        tens of sweeps through tensor-sized temporaries; on the CPU a large tensor is cut into
        blocks of about :data:`EAGER_BLOCK_NUMEL` elements so that the temporaries stay in
        cache. Every kernel here is row-local, and its per-tensor sums add up over row blocks.
        """
        small = b.rows < 2 or b.rows * b.cols <= 2 * EAGER_BLOCK_NUMEL
        if self._compile or not b.direct or small or b.params[0].device.type != "cpu":
            return [slice(None)]
        n = max(1, EAGER_BLOCK_NUMEL // b.cols)
        return [slice(i, i + n) for i in range(0, b.rows, n)]

    def _kernel(self, fn: Callable) -> Callable:
        """``fn`` as the bucket loop calls it: ``kernel(bucket)(*args)``."""
        if not self._compile:
            return lambda b: fn
        dyn, static = K.compiled(fn), K.compiled(fn, static=True)
        return lambda b: static if b.direct else dyn

    def _step_layout(self, group: dict[str, Any], lay: Layout, step: Gathered) -> None:
        """One step of the tensors of ``lay`` (``step``: their gathered gradients and weights)."""
        raise NotImplementedError

    # ---- helpers of _step_layout ---------------------------------------------------------

    def _step_inputs(self, group: dict[str, Any], lay: Layout, step: Gathered) -> tuple[Any, Tensor, Tensor]:
        """The per-tensor scalars (a :attr:`Scalars`), the active flags as floats, and the
        learning rate as a one-element tensor (as a Python float it would make the compiled
        graphs recompile under a schedule)."""
        scalars = self.Scalars(*[lay.scalars[name] for name in self.scalar_names])
        lr = torch.full((1,), float(group["lr"]), dtype=lay.sdtype, device=lay.device)
        return scalars, step.active.to(lay.sdtype), lr

    def _per_bucket(self, lay: Layout, step: Gathered, scalars: Any,
                    run: Callable[[Bucket, tuple[Tensor, Tensor, list[int]], slice], Any]) -> Any:
        """The compiled steps' loop: ``run(bucket, gathered, members)`` steps one bucket from
        start to end and returns its members' new scalars (``members``: their slice of the
        layout's); buckets without a gradient keep theirs. Returns the new scalars."""
        news = []
        for b, gat in zip(lay.buckets, step.blocks):
            sl = slice(b.slots.start, b.slots.stop)
            news.append(K.fields_at(scalars, sl) if gat is None else run(b, gat, sl))
        return K.fields_cat(news)

    def _commit(self, lay: Layout, step: Gathered, new: Any) -> None:
        """Store the new per-tensor scalars (a :attr:`Scalars`) of the tensors that stepped."""
        lay.commit(step, dict(zip(self.scalar_names, new)))


def base_hparams(base: str, group: dict[str, Any]) -> dict[str, Any]:
    """The base optimizer's hyper-parameters of ``group`` as plain Python values, for the
    step-configuration tuples of DiGraP and FTP (Adam's betas are 0 for SGD)."""
    b1, b2 = (0.0, 0.0) if base == "sgd" else group["betas"]
    return dict(
        beta1=float(b1),
        beta2=float(b2),
        eps=float(group["eps"]),
        weight_decay=float(group["weight_decay"]),
        momentum=float(group["momentum"]),
        dampening=float(group["dampening"]),
        nesterov=bool(group["nesterov"]),
    )


def rows(t: Tensor | None, sl: slice) -> Tensor | None:
    """Rows ``sl`` of an ``(n, rows, ...)`` block or row table (``None`` stays ``None``)."""
    if t is None or sl == slice(None):
        return t
    return t[:, sl]

