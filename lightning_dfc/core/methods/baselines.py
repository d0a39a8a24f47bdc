"""The baselines every DFC experiment is compared with: DFA and backpropagation."""

from __future__ import annotations

from dataclasses import dataclass

from ..rules import bp_update, dfa_update
from .base import Method

__all__ = ["DFA", "BP"]


@dataclass(frozen=True)
class DFA(Method):
    """Direct Feedback Alignment with the fixed random feedback weights Q_i as B_i."""

    train_feedback: bool = False
    rule = "dfa"
    simulates = False

    def compute_forward_update(self, params, x, y, ff, control, settings):
        return dfa_update(params, x, ff, control.delta)


@dataclass(frozen=True)
class BP(Method):
    """Backpropagation of the batch-mean loss (the reference point of every comparison)."""

    feedback_init: str | None = None
    train_feedback: bool = False
    rule = "bp"
    simulates = False
    uses_target = False

    def compute_forward_update(self, params, x, y, ff, control, settings):
        return bp_update(params, x, y, settings.loss)
