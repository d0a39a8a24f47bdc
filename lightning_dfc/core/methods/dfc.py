"""The DFC family: the continuous rule (DFC), the steady-state rule (DFC-SS) and its linearised
form (DFC-SSA). With a :class:`~lightning_dfc.core.targets.StrongTarget` the first two are
Strong-DFC (single phase: DFC with ``single_phase``; two phases: DFC-SS)."""

from __future__ import annotations

from dataclasses import dataclass

from ..rules import dfc_ss_update, dfc_ssa_update, dfc_update
from .base import Method

__all__ = ["DFC", "DFCSteadyState", "DFCSSA"]


@dataclass(frozen=True)
class DFC(Method):
    """The local rule applied continuously, averaged over the simulation (paper eq. 5)."""

    rule = "dfc"
    supports_strong_target = True
    supports_single_phase = True

    def compute_forward_update(self, params, x, y, ff, control, settings):
        feedback_rule = settings.feedback_rule if self.single_phase else None
        return dfc_update(params, x, ff, control.target, settings.dynamics, settings.criterion, settings.generator,
                          settings.learning_rule, delta=control.delta, output_error=control.output_error,
                          feedback_rule=feedback_rule)


@dataclass(frozen=True)
class DFCSteadyState(Method):
    """The rule at the simulated steady state only (DFC-SS; Strong-DFC two phases)."""

    rule = "dfc_ss"
    supports_strong_target = True

    def compute_forward_update(self, params, x, y, ff, control, settings):
        return dfc_ss_update(params, x, ff, control.target, settings.dynamics, settings.criterion,
                             settings.learning_rule, delta=control.delta, output_error=control.output_error,
                             generator=settings.generator)


@dataclass(frozen=True)
class DFCSSA(Method):
    """The rule at the linearised steady state (DFC-SSA): no simulation, a linear solve."""

    rule = "dfc_ssa"

    def compute_forward_update(self, params, x, y, ff, control, settings):
        return dfc_ssa_update(params, x, ff, None, settings.dynamics.alpha, settings.learning_rule,
                              delta=control.delta)
