"""Clipping of the updates written into ``.grad``, the same in every door (``DFCModule``,
``DFCMixin``, the plain ``lightning_dfc.DFC``).

The updates are clipped in groups, each group to a joint 2-norm of at most ``max_norm`` (the
formula of ``torch.nn.utils.clip_grad_norm_``, epsilon included). The groupings are the authors':

* forward weights (``updates.clip_grouping``): ``tensor`` (W_i and b_i separately, the DFC paper's
  code) or ``layer`` (W_i and b_i together, Strong-DFC's);
* feedback weights (``feedback.clip_grouping``): ``all`` (every Q_i together, a frozen Q_L's
  update included, the DFC paper's code) or ``layer`` (each Q_i alone).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .network import DFCNetwork

__all__ = ["clip_groups", "feedback_clip_groups", "forward_clip_groups", "write_feedback_grads"]


@torch.no_grad()
def clip_groups(groups: list[list[Tensor]], max_norm: float | None) -> int:
    """Scale each group of tensors in place to a joint 2-norm of at most ``max_norm`` (``None``:
    leave them); returns how many groups were clipped."""
    if max_norm is None:
        return 0
    clipped = 0
    for group in groups:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in group]))
        clipped += int(norm > max_norm)
        coef = max_norm / (norm + 1e-6)  # torch's formula, epsilon included
        if coef < 1.0:
            for g in group:
                g.mul_(coef)
    return clipped


def forward_clip_groups(net: DFCNetwork, grouping: str) -> list[list[Tensor]]:
    """The forward updates in ``.grad`` of ``net``'s W_i, b_i, grouped for clipping (``tensor`` or
    ``layer``)."""
    if grouping == "tensor":
        return [[p.grad] for p in net.forward_parameters()]
    return [[p.grad for p in (lin.weight, lin.bias) if p is not None] for lin in net.layers]


def write_feedback_grads(net: DFCNetwork, grads: list[Tensor]) -> list[Tensor]:
    """Write the feedback updates (one per Q_i, a frozen Q_L's last) into the trainable Q_i's
    ``.grad``; returns those ``.grad`` with a frozen Q_L's update appended, cast like them: with
    the ``all`` grouping it still counts in the clipping norm, as in the DFC paper's code (it
    computes Q_L's update and clips all Q updates together)."""
    qs = net.trainable_feedback()
    for q, g in zip(qs, grads):  # Q_L last: dropped when frozen
        q.grad = g.to(q.dtype)
    return [q.grad for q in qs] + [g.to(qs[0].dtype) for g in grads[len(qs):]]


def feedback_clip_groups(net: DFCNetwork, updates: list[Tensor], grouping: str) -> list[list[Tensor]]:
    """The feedback updates grouped for clipping (``all`` or ``layer``). ``updates``: the
    trainable Q_i's ``.grad``, then the update of a frozen Q_L (it counts in the ``all`` norm)."""
    if grouping == "all":
        return [updates]
    return [[q.grad] for q in net.trainable_feedback()]
