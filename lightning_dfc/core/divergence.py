"""One divergence test for every simulation, wake or sleep, noisy or not.

A batch is skipped (nothing applied) when its simulation or its update left the range a working
run stays in. The causes, checked in this order:

* ``non_finite``: a state, control or update value is inf or NaN;
* ``state_norm``: some sample's voltage deviation ||v - v^-|| exceeds ``state_bound`` times
  (||v^-|| + 1): the state ran away (e.g. a sleep phase whose controller overshoots);
* ``error_growth``: the controller's output error grew over a noise-free simulation (with noise
  the final error is noise-dominated: a small nudge ends below the noise level, so its ratio says
  nothing; runaway noisy dynamics are caught by the state bound);
* ``update_norm``: the update's norm exceeds ``update_bound`` times (the parameters' norm + 1).

:func:`advice` turns the cause and the simulation's settings into the remedy to print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import SimulationConfig

__all__ = ["DivergenceCheck", "DivergenceError", "state_ratio", "advice", "CAUSES", "CAUSE_WORDS", "stop_if_too_many"]

CAUSES = ("non_finite", "state_norm", "error_growth", "update_norm")
CAUSE_WORDS = {
    "non_finite": "inf or NaN values",
    "state_norm": "the state ran away from the feedforward state",
    "error_growth": "the controller made the output error grow",
    "update_norm": "a finite but huge update",
}


class DivergenceError(RuntimeError):
    """Raised after too many consecutive batches with diverging dynamics."""


def stop_if_too_many(in_a_row: int, limit: int, cause: str | None, phase: str, remedy: str) -> None:
    """Stop training when ``in_a_row`` consecutive batches diverged, ``limit`` or more
    (``updates.max_diverged_batches``); the same in every door.

    Args:
        cause: the last batch's cause; phase: ``wake`` or ``sleep``; remedy: :func:`advice`'s words.

    Raises:
        DivergenceError: naming the phase, the count, the cause and the remedy.
    """
    if in_a_row >= limit:
        raise DivergenceError(
            f"the {phase}-phase dynamics diverged on {limit} consecutive batches (their updates were "
            f"skipped; last cause: {CAUSE_WORDS.get(cause or '', cause)}). Remedy: {remedy}."
        )


def state_ratio(v: list[Tensor], dv: list[Tensor]) -> float:
    """max over samples of ||v - v^-|| / (||v^-|| + 1), all layers together (v, dv: (B, n_i))."""
    dev = torch.sqrt(sum(torch.sum(d.double() ** 2, dim=1) for d in dv))
    ref = torch.sqrt(sum(torch.sum((a - d).double() ** 2, dim=1) for a, d in zip(v, dv)))
    ratio = dev / (ref + 1.0)
    return float(ratio.max()) if ratio.numel() else 0.0


@dataclass(frozen=True)
class DivergenceCheck:
    """When a batch counts as diverged; see the module docstring for the causes."""

    state_bound: float = 1e3
    update_bound: float = 1e6

    def cause(self, stats: dict[str, float], noisy: bool, updates: list[Tensor] = (),
              params: list[Tensor] = ()) -> str | None:
        """The first cause that applies, or ``None`` for a healthy batch. ``stats``: the
        simulation's statistics (``finite``, ``state_ratio``, ``error_ratio``)."""
        if stats.get("finite", 1.0) == 0.0 or not all(bool(torch.isfinite(t).all()) for t in updates):
            return "non_finite"
        if not stats.get("state_ratio", 0.0) <= self.state_bound:  # NaN counts as beyond
            return "state_norm"
        ratio = stats.get("error_ratio", 0.0)
        if not math.isfinite(ratio) or (not noisy and ratio > 1.0):
            return "error_growth"
        if updates:
            norm, scale = (float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in ts])))
                           if ts else 0.0 for ts in (updates, params))
            if norm > self.update_bound * (scale + 1.0):
                return "update_norm"
        return None


def advice(cause: str, cfg: SimulationConfig, where: str) -> str:
    """The remedy for a divergence of ``cause`` in the simulation ``cfg`` (YAML path ``where``,
    e.g. ``dynamics`` or ``feedback.simulation``)."""
    if cfg.k_p * cfg.dt > 1.0:
        return (f"{where}.k_p * {where}.dt = {cfg.k_p * cfg.dt:.3g} > 1 makes the controller's Euler step "
                f"overshoot: lower {where}.k_p (now {cfg.k_p:g}) or {where}.dt (now {cfg.dt:g})")
    if cfg.dt > 0.5 * cfg.tau_v:
        return f"{where}.dt = {cfg.dt:g} is close to tau_v = {cfg.tau_v:g}: lower {where}.dt"
    if cfg.alpha < 1e-3 and cause in ("error_growth", "state_norm"):
        return f"the controller leak {where}.alpha = {cfg.alpha:g} is small: raise it (e.g. to 0.01)"
    if cause == "update_norm":
        return "the update is huge compared with the weights: lower the target stepsize or the learning rates"
    return ("pre-train the feedback weights longer (feedback.pretrain_epochs), increase the controller leak "
            f"{where}.alpha or the gain {where}.k_p, use a smaller {where}.dt, or lower the learning rates")
