"""The method object: what a learning method needs and how it computes its updates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import TARGET_STEPSIZE, Settings, SimulationConfig, UpdateConfig
from ..dynamics import Feedforward, feedforward
from ..network import LayerParams
from ..rules import ConvergenceCriterion, FeedbackRule, Update, feedback_update
from ..losses import Loss
from ..targets import ControlTarget, HoldOutput, NudgedTarget, StrongTarget, Target

__all__ = ["Method", "UpdateSettings"]


@dataclass(frozen=True)
class UpdateSettings:
    """Everything a method's forward update needs besides the network and the batch.

    Attributes:
        loss: ``cross_entropy`` or ``mse``.
        target_stepsize: lambda, divided by the number of DDP ranks (each rank sees 1/world_size
            of the global batch-mean loss).
        dynamics: the wake simulation.
        criterion: the convergence test (and whether non-converged samples are excluded).
        learning_rule: the forward rule's teaching signal (``nonlinear_difference`` or
            ``voltage_difference``).
        generator: the noise's random generator (``None``: torch's global one).
        feedback_rule: single-phase learning: the feedback rule applied in the same simulation.
    """

    loss: Loss = "cross_entropy"
    target_stepsize: float = TARGET_STEPSIZE
    dynamics: SimulationConfig = field(default_factory=SimulationConfig)
    criterion: ConvergenceCriterion = ConvergenceCriterion()
    learning_rule: str = "nonlinear_difference"
    generator: torch.Generator | None = None
    feedback_rule: FeedbackRule | None = None


@dataclass(frozen=True)
class Method:
    """A learning method: a forward rule (the subclass), the target its controller drives the
    output to, and how its feedback weights are initialised and learned.

    Subclasses implement :meth:`compute_forward_update`; the registry
    (:func:`~lightning_dfc.core.methods.register_method`) names them.

    Attributes:
        feedback_init: initialisation of Q (``xavier_normal`` or ``weight_product``; ``None``:
            the method uses no feedback weights).
        train_feedback: whether Q learns (sleep epochs, or in the wake simulation).
        target: what the controller drives the output to (:mod:`~lightning_dfc.core.targets`).
        single_phase: Q learns from the noise of the wake simulation itself, with the high-pass
            feedback rule (Strong-DFC single phase), instead of in sleep epochs.
        name: the registry name (set by :func:`register_method`).
    """

    feedback_init: str | None = "xavier_normal"
    train_feedback: bool = True
    target: Target = NudgedTarget()
    single_phase: bool = False
    name: str = ""

    rule: ClassVar[str] = ""  # the forward rule's name in the logs and the functional API
    simulates: ClassVar[bool] = True  # runs the controlled dynamics (DFA and BP do not)
    uses_target: ClassVar[bool] = True  # needs the feedforward pass and the output target (BP does not)
    supports_strong_target: ClassVar[bool] = False
    supports_single_phase: ClassVar[bool] = False

    # ------------------------------------------------------------------ what it needs
    @property
    def strong(self) -> bool:
        """Whether the controller drives the output to the label itself (Strong-DFC)."""
        return self.target.strong

    @property
    def default_normalize_lr(self) -> bool:
        """Divide the forward learning rate by lambda unless the target has no lambda."""
        return not self.strong

    @property
    def default_forward_clip_grouping(self) -> str:
        return "layer" if self.strong else "tensor"  # strong_dfc's code / deep_feedback_control's

    @property
    def default_feedback_clip_grouping(self) -> str:
        return "layer" if self.strong else "all"

    def normalize_lr(self, updates: Any) -> bool:
        """Whether the forward learning rate is divided by lambda: ``updates.normalize_lr``, or
        this method's default when that is ``None``."""
        return self.default_normalize_lr if updates.normalize_lr is None else bool(updates.normalize_lr)

    def forward_clip_grouping(self, updates: Any) -> str:
        """``tensor`` or ``layer``: ``updates.clip_grouping``, or this method's default."""
        return updates.clip_grouping if updates.clip_grouping is not None else self.default_forward_clip_grouping

    def feedback_clip_grouping(self, feedback: Any) -> str:
        """``all`` or ``layer``: ``feedback.clip_grouping``, or this method's default."""
        return feedback.clip_grouping if feedback.clip_grouping is not None else self.default_feedback_clip_grouping

    def check_composition(self) -> None:
        """Refuse a target or feedback rule this forward rule cannot use."""
        label = self.name or self.rule
        if self.strong and not self.supports_strong_target:
            raise ValueError(
                f"strong feedback needs a simulated controller (dfc or dfc_ss), not {label!r}: the linearised "
                "steady state (ssa) is not accurate far from the feedforward state"
            )
        if self.single_phase and not self.supports_single_phase:
            raise ValueError(f"single-phase feedback learning uses the continuous dfc rule, not {label!r}")

    def validate(self, settings: Settings) -> None:
        """Refuse settings this method cannot train with, naming the setting to change."""
        dynamics, feedback, updates = settings
        self.check_composition()
        if self.strong and updates.normalize_lr:
            raise ValueError(
                f"{self.name} drives the output to the label: there is no target stepsize to "
                "normalise the learning rate by. Set updates.normalize_lr: false (or leave it unset)."
            )
        if self.single_phase:
            if not dynamics.noisy:
                raise ValueError(
                    f"{self.name} learns the feedback weights from the noise in the wake dynamics: "
                    "set dynamics.sigma > 0 (the authors use sigma 4.28e-3, sigma_output 2.97e-2, "
                    "tau_noise 0.07 on MNIST)"
                )
            if feedback.highpass_tau is None:
                raise ValueError(
                    f"{self.name} needs feedback.highpass_tau (the high-pass filter of the control "
                    "signal in the single-phase feedback rule; the authors use 0.5)"
                )
        for where, sim in (("dynamics", dynamics), ("feedback.simulation", feedback.simulation)):
            drives_q = where == "feedback.simulation" or self.single_phase
            if feedback.layer_scaling and drives_q and sim.tau_noise is None:
                raise ValueError(f"feedback.layer_scaling needs low-pass filtered noise: set {where}.tau_noise")

    # ------------------------------------------------------------------ configured pieces
    def wake_target(self, updates: UpdateConfig) -> Target:
        """The wake simulation's target with the settings' class value (strong targets) or
        target loss (nudged targets)."""
        if isinstance(self.target, StrongTarget):
            return dataclasses.replace(self.target, class_value=updates.target_class_value)
        if isinstance(self.target, NudgedTarget):
            return dataclasses.replace(self.target, loss=updates.target_loss)
        return self.target

    def sleep_target(self, settings: Settings, pretraining: bool) -> Target:
        """The sleep (or pre-training) simulation's target: DFC holds the output; Strong-DFC drives
        it to the label, in pre-training with the linear error when ``pretrain_mode`` is
        ``published`` (what the authors' runs did)."""
        if not self.strong:
            return HoldOutput()
        linear = pretraining and settings.feedback.pretrain_mode == "published"
        return dataclasses.replace(self.wake_target(settings.updates), linear_error=linear)

    def feedback_rule(self, settings: Settings, pretraining: bool) -> FeedbackRule:
        """The feedback rule of the wake (single phase) or of a sleep/pre-training epoch. Weight
        decay is left to the feedback optimizers."""
        dynamics, feedback, _ = settings
        if not self.single_phase:  # DFC's sleep rule, and Strong-DFC's two-phase one
            return FeedbackRule(0.0, feedback.sigma_floor, layer_scaling=feedback.layer_scaling)
        # Strong-DFC single phase: high-pass filtered control. The authors' pre-training takes the
        # filter rate and the layer scaling's tau_v from the wake simulation (pretrain_mode).
        clock = dynamics if pretraining and feedback.pretrain_mode == "published" else None
        return FeedbackRule(0.0, feedback.sigma_floor, feedback.highpass_tau, feedback.layer_scaling, clock)

    def update_settings(self, loss: Loss, target_stepsize: float, settings: Settings,
                        generator: torch.Generator | None = None) -> UpdateSettings:
        """The one settings object of :meth:`forward_update` from the run's settings (lambda
        already divided by the number of DDP ranks)."""
        updates = settings.updates
        criterion = ConvergenceCriterion(updates.convergence_threshold, updates.convergence_epsilon,
                                         updates.exclude_non_converged)
        rule = self.feedback_rule(settings, pretraining=False) if self.single_phase else None
        return UpdateSettings(loss, target_stepsize, settings.dynamics, criterion, updates.learning_rule, generator,
                              rule)

    # ------------------------------------------------------------------ updates
    def forward_update(self, params: LayerParams, x: Tensor, y: Tensor, settings: UpdateSettings,
                       target: Target | None = None) -> Update:
        """The forward-weight update of one batch (gradient sign), ``target`` defaulting to the
        method's own. ``x`` (B, n_0); ``y`` labels (B,) or regression targets (B, n_L)."""
        self.check_composition()
        ff = control = None
        if self.uses_target:
            ff = feedforward(params, x)
            control = (target or self.target).control(ff.r[-1], y, settings.loss, settings.target_stepsize)
        update = self.compute_forward_update(params, x, y, ff, control, settings)
        if ff is not None and update.output is None:
            update.output = ff.r[-1]
        return update

    def compute_forward_update(self, params: LayerParams, x: Tensor, y: Tensor, ff: Feedforward | None,
                               control: ControlTarget | None, settings: UpdateSettings) -> Update:
        """The rule itself, given the feedforward pass and the controller's target."""
        raise NotImplementedError

    def sleep_step(self, params: LayerParams, x: Tensor, y: Tensor | None, loss: Loss, settings: Settings,
                   pretraining: bool, generator: torch.Generator | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """One sleep (or pre-training) batch with this method's target and feedback rule:
        :meth:`sleep_update` with :meth:`sleep_target` and :meth:`feedback_rule`."""
        return self.sleep_update(params, x, y if self.strong else None, loss, self.sleep_target(settings, pretraining),
                                 settings.feedback.simulation, self.feedback_rule(settings, pretraining), generator)

    def sleep_update(self, params: LayerParams, x: Tensor, y: Tensor | None, loss: Loss, target: Target,
                     simulation: SimulationConfig, rule: FeedbackRule,
                     generator: torch.Generator | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """The feedback-weight update of one sleep or pre-training batch (one tensor per Q_i)."""
        return feedback_update(params, x, simulation, generator=generator, rule=rule, y=y, loss=loss, target=target)
