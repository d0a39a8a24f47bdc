"""The settings of a DFC run, as validated dataclasses (the YAML groups).

* :class:`SimulationConfig`: one simulation of the controlled network. Time is measured in units
  of the controller time constant tau_u (= 1), as in the paper and the reference code. The same
  dataclass describes the forward-weight (wake) simulation and the feedback-weight (sleep)
  simulation; :func:`sleep_defaults` gives the sleep phase's values of the paper's MNIST
  configuration.
* :class:`FeedbackConfig`: the sleep phase, the schedule and the feedback rule's scaling.
* :class:`UpdateConfig`: how forward updates are formed, scaled and guarded.

Bad values are refused here, with a message that names the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .schedule import PhaseSchedule

__all__ = [
    "SimulationConfig", "sleep_defaults", "RULES", "FeedbackConfig", "UpdateConfig",
    "as_config", "as_optimizer", "plain", "TARGET_STEPSIZE", "Settings",
]

TARGET_STEPSIZE = 0.07794  # lambda's default: the DFC paper's MNIST value (its configs_mnist/mnist_dfc.py)

RULES = ("nonlinear_difference", "voltage_difference")  # the forward rule's teaching signal

DTYPES = (None, "float32", "float64")
NOISES = (None, "gaussian", "two_point")


@dataclass
class SimulationConfig:
    """One simulation of the network (eq. 1) and the leaky PI controller (eq. 4).

    Args:
        dt: Euler step (units of tau_u). Must not exceed ``tau_v`` or ``tau_apical``.
        steps: number of stored time points T (T - 1 Euler steps; the reference's ``tmax_di``).
        k_p: proportional gain of the controller (0: pure leaky integral control).
        alpha: leak of the controller, acting on the total control signal u.
        tau_v: somatic time constant (the reference's ``time_constant_ratio``).
        tau_apical: time constant of the feedback (apical) compartment; ``None`` means ``dt``,
            i.e. the apical voltage equals Q u instantly (the reference default).
        proactive: the layers see the control signal of the same step, u[t+1] (reference
            ``proactive_controller``); otherwise u[t].
        inst_transmission: layer i's basal input uses layer i-1's rate of the same step.
        sigma: std of the white noise entering the apical compartment of hidden layers
            (Euler-Maruyama: ``+ sigma * sqrt(dt) / tau_apical * N(0, 1)``). 0 disables noise.
        sigma_output: the same for the output layer; ``None`` means ``sigma``.
        tau_noise: low-pass filter the noise (Strong-DFC): each layer's noise is
            n <- (1 - dt/tau_noise) n + (dt/tau_noise) / sqrt(dt) * N(0, 1), and sigma * n is
            added to the apical voltage. ``None``: white noise as above.
        The remaining fields are the numerics levers: how the simulation is computed, not what it
        simulates. ``None`` (their default) leaves each to the run's numerics preset
        (:mod:`~lightning_dfc.core.numerics`: ``fast``, the default, or ``exact``, the published
        numerics); a value set here overrides the preset for this simulation.

        early_stop: noise-free simulations: stop once the state has reached its slow exponential
            approach to the controller's fixed point, and add the rest of the trajectory in closed
            form (the fixed point, solved by Newton's method, plus each sample's geometric
            approach to it; :mod:`~lightning_dfc.core.tail`). The time-averaged update (DFC) and
            the final state (DFC-SS, Strong-DFC two phases) are those of all T time points.
        tolerance: the early stop's bound on the extrapolated part: stop once, for every sample,
            the predicted remaining approach to the fixed point is at most this fraction of the
            sample's control (weighted by its share of the time average for DFC).
        check_every: the early stop's first check (in steps); each further check after twice as many steps.
        outer_every: the DFC update's presynaptic sum splits exactly into a first-order part
            (accumulated every step) and the part s_i (r_{i-1} - r^-_{i-1})^T, second order in
            the nudge, which is accumulated every ``outer_every`` steps (rectangle rule): 1 = every
            step (exact). Its error grows with the target's distance and the noise; the fast
            preset's 10 is checked against 1 for noisy simulations and strong targets too
            (``tests/core/test_numerics.py``, ``docs/numerics.md``).
        dtype: simulate in this dtype (``"float32"`` or ``"float64"``) whatever the network's;
            the results come back in the network's dtype. float32 keeps its precision through the
            deviation form (``docs/concepts.md`` section 8).
        noise: the distribution of the noise increments: ``gaussian`` (Euler-Maruyama, drawn per
            step as the authors do) or ``two_point`` (+-1 with equal probability, the simplified
            weak Euler scheme: the same mean, variance and odd moments, so the same weak order;
            drawn from random bits, about 8x cheaper than Gaussian draws on a CPU).
        linear_sleep: simulate DFC's sleep phase (the controller holding the output at its
            feedforward value, white apical noise) linearised around the feedforward state and
            reduced to the output's dimensions (:mod:`~lightning_dfc.core.linear_sleep`): the
            same feedback-rule sum to first order in the noise, its part that never reaches
            the output drawn once per batch. Other phases always simulate the full network.
        compile: run each layer's element-wise step of a float32 (deviation-form) simulation
            through ``torch.compile`` (off in both presets: on this project's CPUs it did not
            pay, ``docs/performance.md``).
    """

    dt: float = 0.02
    steps: int = 1000
    k_p: float = 2.0
    alpha: float = 1.389e-3
    tau_v: float = 0.2
    tau_apical: float | None = None
    proactive: bool = True
    inst_transmission: bool = True
    sigma: float = 0.0
    sigma_output: float | None = None
    tau_noise: float | None = None
    early_stop: bool | None = None
    tolerance: float | None = None
    check_every: int | None = None
    outer_every: int | None = None
    dtype: str | None = None
    noise: str | None = None
    linear_sleep: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SimulationConfig: {msg}")

        for name in ("dt", "tau_v"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive number, got {value!r}")
        if self.tolerance is not None:
            need(math.isfinite(self.tolerance) and self.tolerance > 0,
                 f"tolerance must be a positive number or None (the numerics preset's), got {self.tolerance!r}")
        need(
            isinstance(self.steps, int) and self.steps >= 2,
            f"steps must be an integer >= 2 (number of time points T), got {self.steps!r}",
        )
        for name in ("check_every", "outer_every"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                 f"{name} must be a positive integer or None (the numerics preset's), got {value!r}")
        need(
            self.dtype in DTYPES,
            f"dtype must be one of {sorted(d for d in DTYPES if d)} or None (the numerics preset's), got {self.dtype!r}",
        )
        need(self.noise in NOISES,
             f"noise must be one of {sorted(n for n in NOISES if n)} or None (the numerics preset's), got {self.noise!r}")
        need(self.linear_sleep in (None, True, False),
             f"linear_sleep must be true, false or None (the numerics preset's), got {self.linear_sleep!r}")
        for name in ("k_p", "alpha", "sigma"):
            value = getattr(self, name)
            need(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value!r}")
        if self.sigma_output is not None:
            need(math.isfinite(self.sigma_output) and self.sigma_output >= 0,
                 f"sigma_output must be a finite number >= 0, got {self.sigma_output!r}")
        need(
            self.dt <= self.tau_v,
            f"dt={self.dt} is larger than the somatic time constant tau_v={self.tau_v}: the Euler "
            "scheme would overshoot. Use a smaller dt or a larger tau_v.",
        )
        if self.tau_noise is not None:
            need(
                math.isfinite(self.tau_noise) and self.tau_noise >= self.dt,
                f"tau_noise must be >= dt={self.dt} (or None for white noise), got {self.tau_noise!r}",
            )
        if self.tau_apical is not None:
            need(math.isfinite(self.tau_apical) and self.tau_apical > 0,
                 f"tau_apical must be a finite positive number or None (= dt), got {self.tau_apical!r}")
            need(
                self.dt <= self.tau_apical,
                f"dt={self.dt} is larger than the apical time constant tau_apical="
                f"{self.tau_apical}. Use a smaller dt, a larger tau_apical, or None (= dt).",
            )

    @property
    def apical_rate(self) -> float:
        """dt / tau_apical (1.0 means the apical compartment follows Q u instantly)."""
        return 1.0 if self.tau_apical is None else self.dt / self.tau_apical

    @property
    def noisy(self) -> bool:
        """Whether any noise enters the dynamics."""
        return self.sigma > 0 or (self.sigma_output or 0.0) > 0

    @property
    def output_sigma(self) -> float:
        return self.sigma if self.sigma_output is None else self.sigma_output


def sleep_defaults() -> SimulationConfig:
    """Sleep-phase simulation of the paper's MNIST configuration (trained feedback).

    Non-proactive (the reference never passes ``proactive`` to the sleep controller), noisy,
    short (T = 48), with its own leak, gain and time constants.
    """
    return SimulationConfig(
        dt=2.030e-3,
        steps=48,
        k_p=0.1565,
        alpha=0.6134,
        tau_v=6.303e-3,
        tau_apical=0.3247,
        proactive=False,
        inst_transmission=True,
        sigma=1.524e-3,
        sigma_output=None,
    )


# ---------------------------------------------------------------------------------------------
# The training settings of a DFC LightningModule (the YAML groups besides the wake simulation)

# Feedback pre-training by default: for the nudged (DFC) variants until Condition 2 reaches
# ALIGNED_PRETRAIN_UNTIL, at most ALIGNED_PRETRAIN_EPOCHS epochs; for Strong-DFC, whose feedback
# weights satisfy Condition 2 only in part (0.3-0.65 in docs/benchmarks.md), FIXED_PRETRAIN_EPOCHS epochs.
ALIGNED_PRETRAIN_UNTIL = 0.95
ALIGNED_PRETRAIN_EPOCHS = 100
FIXED_PRETRAIN_EPOCHS = 10

FORWARD_CLIP_GROUPINGS = ("tensor", "layer")
TARGET_LOSSES = ("mean", "sum")
FEEDBACK_CLIP_GROUPINGS = ("all", "layer")
PRETRAIN_MODES = ("published", "clean")


@dataclass
class FeedbackConfig:
    """Feedback-weight (sleep) training: its simulation, the schedule and the rule's scaling.

    Args:
        simulation: the noisy sleep-phase simulation (default: the paper's MNIST values,
            :func:`~lightning_dfc.core.config.sleep_defaults`; a dict, or a YAML section, that leaves
            fields out keeps those defaults for them, e.g. a non-proactive controller).
        pretrain_epochs: sleep epochs before training (reference ``epochs_fb``), with the
            pre-training optimizer; with ``pretrain_until``, the most there may be. ``None``
            (default): 100 while pre-training until aligned, else 10 (the DFC paper's count).
        pretrain_until: ``"auto"`` (default): 0.95 for the DFC variants, ``None`` for the
            Strong-DFC ones (their feedback weights satisfy Condition 2 only in part). The papers'
            runs (every config in ``examples/``) pre-train a fixed count: ``null``. A number: end
            the pre-training early, after the first epoch at whose end the
            feedback weights satisfy Condition 2 to at least this degree (||P Qbar|| / ||Qbar||
            in (0, 1], measured on the epoch's first batch; 1 = every column of Qbar in the row
            space of the network's Jacobian), or whose Condition 2 rose by less than
            ``pretrain_min_gain`` over the epoch (it has levelled off: with ReLU units it
            levels off below 1). ``None``: exactly ``pretrain_epochs`` epochs (the papers). A fixed
            epoch count is a fixed number of updates only for a fixed data set size: on a small
            data set, 10 epochs leave the feedback weights far from aligned.
        pretrain_min_gain: with ``pretrain_until``: the smallest rise of Condition 2 over a
            pre-training epoch that continues the pre-training below the threshold (0: only
            the threshold and ``pretrain_epochs`` end it).
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
        resume_with_new_schedule: allow resuming a run from a checkpoint whose schedule
            (``pretrain_epochs``, ``pretrain_until``, ``sleep_before``, ``sleep_after``) differs from this one;
            otherwise such a resume is refused (the epoch -> phase mapping would change).
        validate: run the validation pass after pre-training and sleep epochs too. ``False``
            (default): after wake epochs only, the epochs in which the forward weights change
            (the sanity check, ``fast_dev_run``, ``validate`` and ``test`` are not affected).
    """

    simulation: SimulationConfig = field(default_factory=sleep_defaults)
    pretrain_epochs: int | None = None
    pretrain_until: float | Literal["auto"] | None = "auto"
    pretrain_min_gain: float = 1e-3
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
    resume_with_new_schedule: bool = False
    validate: bool = False

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
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"FeedbackConfig: weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.sigma_floor) and self.sigma_floor > 0):
            raise ValueError(f"FeedbackConfig: sigma_floor must be a finite positive number, got {self.sigma_floor!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"FeedbackConfig: clip_norm must be positive or None, got {self.clip_norm}")
        PhaseSchedule(self.pretrain_epochs or 0, self.sleep_before, self.sleep_after)  # validates the epoch counts
        if self.pretrain_until not in (None, "auto"):
            if isinstance(self.pretrain_until, bool) or not (
                    isinstance(self.pretrain_until, (int, float)) and 0 < self.pretrain_until <= 1):
                raise ValueError("FeedbackConfig: pretrain_until (a Condition 2 threshold) must lie in (0, 1], or be "
                                 f"'auto' or None, got {self.pretrain_until!r}")
        if not (isinstance(self.pretrain_min_gain, (int, float)) and math.isfinite(self.pretrain_min_gain)
                and self.pretrain_min_gain >= 0):
            raise ValueError(f"FeedbackConfig: pretrain_min_gain must be a finite number >= 0, got {self.pretrain_min_gain!r}")

    def resolved(self, strong: bool) -> FeedbackConfig:
        """This config with ``pretrain_until: auto`` and ``pretrain_epochs: None`` made concrete for
        a method (``strong``: a Strong-DFC variant)."""
        until = self.pretrain_until
        if until == "auto":
            until = None if strong else ALIGNED_PRETRAIN_UNTIL
        epochs = self.pretrain_epochs
        if epochs is None:
            epochs = ALIGNED_PRETRAIN_EPOCHS if until is not None else FIXED_PRETRAIN_EPOCHS
        return dataclasses.replace(self, pretrain_until=until, pretrain_epochs=epochs)

    def schedule(self, train_feedback: bool) -> PhaseSchedule:
        """The epoch schedule (of a :meth:`resolved` config)."""
        if self.pretrain_epochs is None:
            raise ValueError("FeedbackConfig.schedule: resolve the config for its method first (resolved())")
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
        target_loss: the loss whose gradient lambda scales in DFC's nudged target
            r_L* = r_L^- - lambda dL/dr_L: ``mean``, the batch-mean loss (the DFC paper's code,
            deep_feedback_control); ``sum``, the batch-summed loss, i.e. each sample's own loss,
            a nudge independent of the batch size (strong_dfc's code, ``dfc_network.py``
            ``compute_output_target``: batch size times the mean). Under DDP ``mean`` is the
            global batch's mean, as on one device.
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
        max_skipped_fraction: stop training when more than this fraction of an epoch's batches
            were skipped as diverged (``core/divergence.py``), with advice that follows the cause.
    """

    learning_rule: str = "nonlinear_difference"
    normalize_lr: bool | None = None
    target_loss: str = "mean"
    target_class_value: float = 0.99
    clip_norm: float | None = 1.0
    clip_grouping: str | None = None
    exclude_non_converged: bool = False
    convergence_threshold: float = 1e-5
    convergence_epsilon: float = 0.5
    max_diverged_batches: int = 10
    max_skipped_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.learning_rule not in RULES:
            raise ValueError(f"UpdateConfig: learning_rule must be one of {RULES}, got {self.learning_rule!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"UpdateConfig: clip_norm must be positive or None, got {self.clip_norm}")
        if self.clip_grouping not in (None, *FORWARD_CLIP_GROUPINGS):
            raise ValueError(
                f"UpdateConfig: clip_grouping must be one of {FORWARD_CLIP_GROUPINGS} or None, got {self.clip_grouping!r}"
            )
        if self.target_loss not in TARGET_LOSSES:
            raise ValueError(f"UpdateConfig: target_loss must be one of {TARGET_LOSSES} (mean: the DFC paper's "
                             f"batch-mean loss; sum: strong_dfc's batch-summed loss), got {self.target_loss!r}")
        if not 0.0 < self.target_class_value < 1.0:  # (NaN fails too)
            raise ValueError(f"UpdateConfig: target_class_value must lie in (0, 1), got {self.target_class_value!r}")
        if isinstance(self.max_diverged_batches, bool) or not isinstance(self.max_diverged_batches, int) \
                or self.max_diverged_batches < 1:
            raise ValueError(
                f"UpdateConfig: max_diverged_batches must be an integer >= 1, got {self.max_diverged_batches!r}")
        for name in ("convergence_threshold", "convergence_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"UpdateConfig: {name} must be a finite positive number, got {value!r}")
        if not 0.0 < self.max_skipped_fraction <= 1.0:
            raise ValueError(
                f"UpdateConfig: max_skipped_fraction must lie in (0, 1], got {self.max_skipped_fraction!r}")


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


class Settings(NamedTuple):
    """A run's three settings groups, always together and in this order (the YAML's
    ``dynamics``, ``feedback``, ``updates``)."""

    dynamics: SimulationConfig
    feedback: FeedbackConfig
    updates: UpdateConfig
