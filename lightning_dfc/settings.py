"""Grouped, validated training settings of a DFC LightningModule (the YAML groups).

``variant`` picks the learning method; :data:`VARIANTS` maps each name to the update rule and the
feedback weights it uses. The simulation of the wake phase is a
:class:`~lightning_dfc.config.SimulationConfig`; :class:`FeedbackConfig` holds the sleep phase and
the schedule; :class:`UpdateConfig` how updates are formed and guarded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import SimulationConfig, sleep_defaults
from .dynamics import RULES
from .schedule import PhaseSchedule

FORWARD_CLIP_GROUPINGS = ("tensor", "layer")
FEEDBACK_CLIP_GROUPINGS = ("all", "layer")
PRETRAIN_MODES = ("published", "clean")

__all__ = ["VariantSpec", "VARIANTS", "FeedbackConfig", "UpdateConfig", "as_config", "as_optimizer", "plain"]


@dataclass(frozen=True)
class VariantSpec:
    """How a named variant trains.

    Attributes:
        rule: the forward update computed by :func:`lightning_dfc.rules.forward_update`.
        feedback_init: initialisation of Q (``None``: no feedback weights used).
        train_feedback: whether Q is trained (sleep epochs, or single-phase learning).
        strong: Strong-DFC: the controller drives the output to the label itself.
        single_phase: forward and feedback weights learn from the same (noisy) simulation.
    """

    rule: str
    feedback_init: str | None
    train_feedback: bool
    strong: bool = False
    single_phase: bool = False


VARIANTS: dict[str, VariantSpec] = {
    "dfc": VariantSpec("dfc", "xavier_normal", True),
    "dfc_ss": VariantSpec("dfc_ss", "xavier_normal", True),
    "dfc_ssa": VariantSpec("dfc_ssa", "xavier_normal", True),
    "dfc_fixed": VariantSpec("dfc", "weight_product", False),
    "dfc_ss_fixed": VariantSpec("dfc_ss", "weight_product", False),
    "dfc_ssa_fixed": VariantSpec("dfc_ssa", "weight_product", False),
    "dfa": VariantSpec("dfa", "xavier_normal", False),
    "bp": VariantSpec("bp", None, False),
    # Strong-DFC (Meulemans, Tristany Farinha, Cervera et al., ICML 2022)
    "strong_dfc": VariantSpec("dfc", "xavier_normal", True, strong=True, single_phase=True),
    "strong_dfc_ss": VariantSpec("dfc_ss", "xavier_normal", True, strong=True),
}


def variant_spec(variant: str) -> VariantSpec:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


@dataclass
class FeedbackConfig:
    """Feedback-weight (sleep) training: its simulation, the schedule and the rule's scaling.

    Args:
        simulation: the noisy sleep-phase simulation (default: the paper's MNIST values,
            :func:`~lightning_dfc.config.sleep_defaults`; a dict, or a YAML section, that leaves
            fields out keeps those defaults for them, e.g. a non-proactive controller).
        pretrain_epochs: sleep epochs before training (reference ``epochs_fb``), with the
            pre-training optimizer.
        sleep_before: sleep epochs before each wake epoch (1 in the reference).
        sleep_after: sleep epochs after each wake epoch (reference ``extra_fb_epochs``).
        weight_decay: L2 decay of Q (reference ``feedback_wd`` / ``weight_decay_fb``). It is the
            feedback and pre-training optimizers' ``weight_decay``, as in both reference code
            bases: it acts after the update has been clipped. (An optimizer given its own
            ``weight_decay`` must agree with this, or this must be 0.)
        sigma_floor: the rule's scale is 1/max(sigma, sigma_floor)^2 (the reference's cap of 1e4).
        freeze_output: keep Q_L = I fixed (reference ``freeze_fb_weights_output``).
        clip_norm: clip the Q updates to this norm (``None``: no clipping), per ``clip_grouping``.
        clip_grouping: ``all``: one norm over every Q_i's update, a frozen Q_L's included (the DFC
            paper's code, deep_feedback_control); ``layer``: each Q_i separately (strong_dfc).
            ``None``: ``layer`` for the Strong-DFC variants, ``all`` otherwise.
        highpass_tau: Strong-DFC (``strong_dfc``): the feedback rule pairs v^A with the control
            minus its exponential moving average of time constant ``tau_f`` (reference 0.5), in the
            wake simulation and in pre-training. Required by single-phase learning.
        layer_scaling: multiply Q_i's update by (1 + tau_v / tau_noise)^(L - i) (reference
            ``scaling_fb_updates``; needs ``tau_noise`` in the simulation that drives it).
        pretrain_mode: Strong-DFC pre-training. ``published`` (default) does what the authors'
            runs did: their pre-training runs before the switch to the cross-entropy error, so
            the controller sees the linear error r_L* - r_L (soft label minus logits), and in
            single-phase runs the high-pass rate dt / tau_f and the layer scaling's tau_v are the
            *wake* simulation's, not the pre-training simulation's. ``clean``: the loss's own
            error (softmax) and the pre-training simulation's dt and tau_v.
    """

    simulation: SimulationConfig = field(default_factory=sleep_defaults)
    pretrain_epochs: int = 10
    sleep_before: int = 1
    sleep_after: int = 2
    weight_decay: float = 1e-3
    sigma_floor: float = 0.01
    freeze_output: bool = False
    clip_norm: float | None = 1.0
    clip_grouping: str | None = None
    highpass_tau: float | None = None
    layer_scaling: bool = False
    pretrain_mode: str = "published"

    def __post_init__(self) -> None:
        if self.clip_grouping not in (None, *FEEDBACK_CLIP_GROUPINGS):
            raise ValueError(
                f"FeedbackConfig: clip_grouping must be one of {FEEDBACK_CLIP_GROUPINGS} or None, got {self.clip_grouping!r}"
            )
        if self.pretrain_mode not in PRETRAIN_MODES:
            raise ValueError(f"FeedbackConfig: pretrain_mode must be one of {PRETRAIN_MODES}, got {self.pretrain_mode!r}")
        if self.highpass_tau is not None and not (math.isfinite(self.highpass_tau) and self.highpass_tau > 0):
            raise ValueError(f"FeedbackConfig: highpass_tau must be positive or None, got {self.highpass_tau!r}")
        if isinstance(self.simulation, dict):
            # fields a dict leaves out keep the sleep phase's defaults, as under LightningCLI
            self.simulation = dataclasses.replace(sleep_defaults(), **self.simulation)
        if not self.simulation.noisy:
            raise ValueError("FeedbackConfig: the sleep simulation needs noise (simulation.sigma > 0)")
        if self.weight_decay < 0 or self.sigma_floor <= 0:
            raise ValueError("FeedbackConfig: weight_decay must be >= 0 and sigma_floor > 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"FeedbackConfig: clip_norm must be positive or None, got {self.clip_norm}")
        self.schedule(True)  # validates the epoch counts

    def schedule(self, train_feedback: bool) -> PhaseSchedule:
        return PhaseSchedule(self.pretrain_epochs, self.sleep_before, self.sleep_after, train_feedback)


@dataclass
class UpdateConfig:
    """How forward updates are formed, scaled and guarded.

    Args:
        learning_rule: ``nonlinear_difference`` (phi(v) - phi(v^B), the paper's eq. 5) or
            ``voltage_difference`` (v - v^B).
        normalize_lr: divide the forward optimizer's learning rate by ``target_stepsize``
            (the reference's ``normalize_lr``, on in all its DFC configs). ``None``: on for the
            nudged variants, off for the strong ones (they have no target stepsize).
        target_class_value: Strong-DFC with cross-entropy: the correct class's value in the soft
            label the controller drives the output to (the authors' 0.99).
        clip_norm: clip the forward updates to this norm, per ``clip_grouping`` (``None``: no
            clipping). Clipped groups are counted and logged (``dfc/clipped``).
        clip_grouping: ``tensor``: W_i and b_i separately (the DFC paper's code,
            deep_feedback_control); ``layer``: [W_i, b_i] jointly (strong_dfc). ``None``:
            ``layer`` for the Strong-DFC variants, ``tensor`` otherwise.
        exclude_non_converged: drop samples whose dynamics did not converge from the update (what
            the reference code does; the paper configs in ``examples/`` set it); by default they
            are included. Either way they are counted and logged.
        convergence_threshold: fixed-point tolerance of the convergence test (reference 1e-5).
        convergence_epsilon: required control-error reduction factor (squared; reference 0.5).
        max_diverged_batches: stop training after this many consecutive batches whose dynamics
            diverged (their updates are skipped and counted).
    """

    learning_rule: str = "nonlinear_difference"
    normalize_lr: bool | None = None
    target_class_value: float = 0.99
    clip_norm: float | None = 1.0
    clip_grouping: str | None = None
    exclude_non_converged: bool = False
    convergence_threshold: float = 1e-5
    convergence_epsilon: float = 0.5
    max_diverged_batches: int = 10

    def __post_init__(self) -> None:
        if self.learning_rule not in RULES:
            raise ValueError(f"UpdateConfig: learning_rule must be one of {RULES}, got {self.learning_rule!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"UpdateConfig: clip_norm must be positive or None, got {self.clip_norm}")
        if self.clip_grouping not in (None, *FORWARD_CLIP_GROUPINGS):
            raise ValueError(
                f"UpdateConfig: clip_grouping must be one of {FORWARD_CLIP_GROUPINGS} or None, got {self.clip_grouping!r}"
            )
        if not 0.0 < self.target_class_value < 1.0:
            raise ValueError(f"UpdateConfig: target_class_value must lie in (0, 1), got {self.target_class_value!r}")
        if self.max_diverged_batches < 1:
            raise ValueError("UpdateConfig: max_diverged_batches must be >= 1")


def as_config(value: Any, cls: type) -> Any:
    """``None``, an instance of the dataclass ``cls`` or a dict of its fields -> an instance or None."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__}, a dict of its fields or None, got {type(value).__name__}")


def as_optimizer(value: Any) -> Callable | None:
    """An optimizer callable from a callable or ``{"class_path": ..., "init_args": {...}}``."""
    if value is None or callable(value):
        return value
    if isinstance(value, dict) and "class_path" in value:
        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return functools.partial(cls, **value.get("init_args", {}))
    raise TypeError(f"expected an optimizer callable or a class_path/init_args dict, got {value!r}")


def plain(value: Any) -> Any:
    """A checkpoint-safe (``torch.load(weights_only=True)``) form of a hyperparameter value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, functools.partial) and isinstance(value.func, type):
        return {"class_path": f"{value.func.__module__}.{value.func.__qualname__}",
                "init_args": {k: plain(v) for k, v in value.keywords.items()}}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
