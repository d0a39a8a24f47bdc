"""What the controller drives the output to: one object per kind of target.

* :class:`NudgedTarget`: DFC's r_L* = r_L^- - lambda dL/dr_L, a small nudge of the output.
* :class:`StrongTarget`: Strong-DFC's label itself (soft labels with cross-entropy).
* :class:`HoldOutput`: the sleep phase's target, the noise-free feedforward output.

Each turns a batch into a :class:`ControlTarget`, the three things a simulation needs (see
:func:`~lightning_dfc.core.dynamics.simulate`), and gives the output target r_L* on its own for the
Jacobian-based diagnostics. Wake and sleep simulations use the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .losses import Loss, output_delta, strong_target

__all__ = ["ControlTarget", "Target", "NudgedTarget", "StrongTarget", "HoldOutput"]


class ControlTarget(NamedTuple):
    """A simulation's target: ``target`` r_L* (B, n_L) or ``None``, ``delta`` = r_L* - r_L^-
    (B, n_L; formed directly where it is a small nudge) or ``None``, and ``output_error``, the
    controller's error: ``linear`` e = r_L* - r_L or ``softmax`` e = r_L* - softmax(r_L)."""

    target: Tensor | None
    delta: Tensor | None
    output_error: str


class Target:
    """Base class of the targets."""

    strong = False

    def control(self, output: Tensor, y: Tensor | None, loss: Loss, target_stepsize: float) -> ControlTarget:
        """The simulation's target for the feedforward output (B, n_L) and labels/targets ``y``.
        ``target_stepsize``: lambda per DDP rank, :meth:`rank_stepsize`."""
        raise NotImplementedError

    def rank_stepsize(self, target_stepsize: float, world_size: int) -> float:
        """The lambda each of ``world_size`` DDP ranks passes to :meth:`control`: lambda / world_size,
        so that a rank's batch-mean gradient is the global batch's."""
        return target_stepsize / max(world_size, 1)

    def output_target(self, output: Tensor, y: Tensor, loss: Loss, target_stepsize: float) -> tuple[Tensor, str]:
        """(r_L* (B, n_L), ``output_error``) for the diagnostics (Conditions, H)."""
        control = self.control(output, y, loss, target_stepsize)
        target = control.target if control.target is not None else output + control.delta
        return target, control.output_error


@dataclass(frozen=True)
class NudgedTarget(Target):
    """DFC: r_L* = r_L^- - lambda dL/dr_L, delta formed without cancellation. ``loss``: L is the
    batch-mean loss (``mean``, the DFC paper's code) or the batch-summed one (``sum``, strong_dfc's
    code: each sample nudged by lambda times its own loss gradient, whatever the batch size)."""

    loss: str = "mean"

    def control(self, output, y, loss, target_stepsize):
        delta = output_delta(output, y, loss, target_stepsize)
        return ControlTarget(None, delta * output.shape[0] if self.loss == "sum" else delta, "linear")

    def rank_stepsize(self, target_stepsize: float, world_size: int) -> float:
        return target_stepsize if self.loss == "sum" else super().rank_stepsize(target_stepsize, world_size)


@dataclass(frozen=True)
class StrongTarget(Target):
    """Strong-DFC: the label itself (cross-entropy: soft labels with ``class_value`` for the
    correct class and e = r_L* - softmax(r_L); MSE: the regression target, e = r_L* - r_L).

    ``linear_error``: the controller sees r_L* - r_L even with cross-entropy (the authors'
    pre-training, ``FeedbackConfig.pretrain_mode='published'``)."""

    class_value: float = 0.99
    linear_error: bool = False
    strong = True

    def control(self, output, y, loss, target_stepsize):
        if y is None:
            raise ValueError("a strong target drives the output to the labels: pass y")
        target, error = strong_target(output, y, loss, self.class_value)
        error = "linear" if self.linear_error else error
        return ControlTarget(target, target - output if error == "linear" else None, error)


@dataclass(frozen=True)
class HoldOutput(Target):
    """The sleep phase: the controller holds the output at the noise-free feedforward output."""

    def control(self, output, y, loss, target_stepsize):
        return ControlTarget(None, torch.zeros_like(output), "linear")
