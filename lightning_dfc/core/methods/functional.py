"""The registered methods as one function: the forward update of a method named by string."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import SimulationConfig
from ..losses import Loss
from ..network import LayerParams
from ..rules import ConvergenceCriterion, FeedbackRule, Update
from ..targets import StrongTarget
from .base import UpdateSettings
from .registry import resolve_method

__all__ = ["forward_update"]


def forward_update(
    variant: str,
    params: LayerParams,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    target_stepsize: float,
    cfg: SimulationConfig,
    criterion: ConvergenceCriterion = ConvergenceCriterion(),
    generator: torch.Generator | None = None,
    rule: str = "nonlinear_difference",
    *,
    strong_class_value: float | None = None,
    feedback_rule: FeedbackRule | None = None,
) -> Update:
    """Forward-weight update of a registered method on one batch (functional form of
    :meth:`~lightning_dfc.core.methods.Method.forward_update`), e.g. ``dfc``, ``dfc_ss``,
    ``dfc_ssa``, ``dfa``, ``bp``.

    Args:
        x: input (B, n_0); y: labels (B,) or regression targets (B, n_L).
        target_stepsize: lambda of the output target.
        cfg: simulation hyperparameters (``alpha`` is also the SSA leak).
        rule: ``nonlinear_difference`` (default, the paper's eq. 5) or ``voltage_difference``.
        strong_class_value: Strong-DFC: the controller drives the output to the label itself
            (:class:`~lightning_dfc.core.targets.StrongTarget`, soft labels with this value for
            cross-entropy) instead of the nudged target; ``None``: the method's own target.
        feedback_rule: single-phase learning (``dfc`` only): also compute the feedback-weight
            updates from the same simulation (``Update.feedback``).
    """
    method = resolve_method(variant)
    changes = {}
    if strong_class_value is not None:
        changes["target"] = StrongTarget(strong_class_value)
    if feedback_rule is not None:
        changes["single_phase"] = True
    if changes:
        method = dataclasses.replace(method, **changes)
    settings = UpdateSettings(loss, target_stepsize, cfg, criterion, rule, generator, feedback_rule)
    return method.forward_update(params, x, y, settings)
