"""What every optimizer here shares: group handling, checks, the plain base step.

Each optimizer takes torch-style parameters (see :func:`._common.split_param_groups`), a base
optimizer (``"adam"``, ``"adamw"`` or ``"sgd"``) whose hyper-parameters every group must
satisfy, and ``foreach`` / ``fused`` for the groups that take torch's own step.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor
from torch.optim import Optimizer

from ._common import check_base_hparams, check_group_tensors, init_plain_state, plain_step, split_param_groups, state_bytes


class RobustOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` over anchored groups on top of Adam, AdamW or SGD."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        base: str,
        exclude: Sequence[str],
        foreach: bool | None,
        fused: bool | None,
    ):
        self.base = base
        self._foreach = foreach
        self._fused = fused
        super().__init__(split_param_groups(params, exclude), defaults)
        for group in self.param_groups:
            check_base_hparams(base, group)
            check_group_tensors(group)
            self._check_group(group)
        self._setup()

    def _check_group(self, group: dict[str, Any]) -> None:
        """The optimizer's own checks of one group's options (after the base optimizer's)."""
        return None

    def _setup(self) -> None:
        """Create what the optimizer keeps beside torch's state, once the groups are checked."""
        return None

    def base_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """torch's Adam / AdamW / SGD step on ``params`` (state created on first use)."""
        states = []
        for p in params:
            init_plain_state(self.state[p], p, self.base, bool(self._fused))
            states.append(self.state[p])
        plain_step(self.base, group, params, grads, states, foreach=self._foreach, fused=self._fused)

    def state_bytes(self) -> int:
        """Bytes of optimizer state (moment buffers, anchors, per-tensor scalars)."""
        return state_bytes(self)
