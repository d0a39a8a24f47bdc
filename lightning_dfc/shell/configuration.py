"""The configuration half of :class:`~lightning_dfc.DFCMixin`: validated settings, the method
object, the wrapped network and the optimizers."""

from __future__ import annotations

import logging
import functools
import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..core.divergence import DivergenceCheck
from .summary import PhaseClock
from ..core.config import (TARGET_STEPSIZE, FeedbackConfig, Settings, SimulationConfig, UpdateConfig, as_config,
                           as_optimizer)
from ..core.methods import UpdateSettings, resolve_method
from ..core.network import DFCNetwork
from ..core.numerics import Numerics, resolve_numerics
from ..core.losses import LOSSES, check_loss
from ..core.schedule import PhaseSchedule
from ..core.targets import Target
from .resume import optimizer_settings

if TYPE_CHECKING:
    from .steps import WakeRecord

__all__ = ["DFCConfiguration", "default_optimizer", "ADAM_BETAS", "FORWARD_BETAS"]

ADAM_BETAS = (0.99, 0.99)  # the papers' betas (every published run), the feedback optimizers' default
# The forward optimizer's default: torch's betas. With the papers' (0.99, 0.99) short runs dip and
# recover between wake epochs (benchmarks/first_hour.py, docs/user_guide.md "Defaults").
FORWARD_BETAS = (0.9, 0.999)


def default_optimizer(lr: float, eps: float, betas: tuple[float, float] = ADAM_BETAS) -> OptimizerCallable:
    """Adam with the given betas (default: the papers' (0.99, 0.99))."""
    return functools.partial(torch.optim.Adam, lr=lr, betas=betas, eps=eps)


class DFCConfiguration:
    """Settings, method, network and optimizers of a DFC module (part of :class:`DFCMixin`)."""

    def configure_dfc(
        self,
        network: nn.Module,
        *,
        variant: str = "dfc",
        loss: str = "cross_entropy",
        target_stepsize: float = TARGET_STEPSIZE,
        dynamics: SimulationConfig | None = None,
        feedback: FeedbackConfig | None = None,
        updates: UpdateConfig | None = None,
        forward_optimizer: OptimizerCallable | None = None,
        feedback_optimizer: OptimizerCallable | None = None,
        pretrain_optimizer: OptimizerCallable | None = None,
        numerics: str | Numerics = "fast",
        resume_with_changes: bool = False,
    ) -> None:
        """Validate the settings and wrap ``network`` (already an attribute of this module).
        ``resume_with_changes``: a fit resumed from a checkpoint may change the checkpoint's DFC
        settings (each is named); without it, a change is refused (see ``shell.resume.check_resume``)."""
        method = resolve_method(variant)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if not (isinstance(target_stepsize, (int, float)) and math.isfinite(target_stepsize) and target_stepsize > 0):
            raise ValueError(f"target_stepsize (lambda) must be a finite positive number, got {target_stepsize!r}")
        self.automatic_optimization = False
        self.dfc_variant = method.name or str(variant)
        self.dfc_method = method
        self.dfc_loss = loss
        self.dfc_target_stepsize = float(target_stepsize)
        self.dfc_numerics = resolve_numerics(numerics)
        self.dfc_resume_with_changes = bool(resume_with_changes)
        dynamics = as_config(dynamics, SimulationConfig) or SimulationConfig()
        feedback = (as_config(feedback, FeedbackConfig) or FeedbackConfig()).resolved(method.strong)
        # the levers set by hand against the preset, for the run summary
        self.dfc_numerics_overrides = {
            **{f"dynamics.{k}": v for k, v in self.dfc_numerics.overridden(dynamics).items()},
            **{f"feedback.simulation.{k}": v for k, v in self.dfc_numerics.overridden(feedback.simulation).items()},
        }
        self.dfc_dynamics, self.dfc_feedback_config = self.dfc_numerics.configure(dynamics, feedback)
        self.dfc_updates = as_config(updates, UpdateConfig) or UpdateConfig()
        self.dfc_schedule: PhaseSchedule = self.dfc_feedback_config.schedule(method.train_feedback)
        method.validate(self.dfc_settings)
        net = DFCNetwork(
            network,
            feedback_init=method.feedback_init or "xavier_normal",
            freeze_output_feedback=self.dfc_feedback_config.freeze_output,
        )
        check_loss(loss, net.activations[-1].name)
        # The wrapper is not registered as a submodule: the host already owns the network's
        # parameters; only the feedback weights are registered here (state_dict, .to(), DDP).
        object.__setattr__(self, "dfc_net", net)
        self.dfc_feedback_weights = net.feedback
        self._dfc_optimizers = {
            "forward": as_optimizer(forward_optimizer) or default_optimizer(9.266e-5, 9.446e-8, FORWARD_BETAS),
            "feedback": as_optimizer(feedback_optimizer) or default_optimizer(5.265e-4, 1.561e-6),
            "pretrain": as_optimizer(pretrain_optimizer) or default_optimizer(3.170e-4, 1.561e-6),
        }
        self.dfc_train_loss = MeanMetric()
        self.dfc_train_acc = (
            MulticlassAccuracy(num_classes=net.sizes[-1], average="micro") if loss == "cross_entropy" else None
        )
        self._dfc_diverged_in_a_row = 0
        self._dfc_divergence = DivergenceCheck()
        self._dfc_epoch_batches = self._dfc_epoch_skipped = 0
        self._dfc_last_cause: tuple[str, str] = ("non_finite", "wake")
        self._dfc_warned_epoch: int | None = None
        self._dfc_clock = PhaseClock()
        self._dfc_skipped_total = {"wake": 0, "sleep": 0}
        self._dfc_forward_epochs: int | None = None
        self._dfc_translated_loop: Any = None
        self._dfc_generator: torch.Generator | None = None
        self._dfc_resume_epoch: int | None = None
        self._dfc_stop_message: logging.Filter | None = None  # fit's stop message in wake epochs
        self._dfc_pretrain_condition_2: float | None = None  # measured after the last pre-training epoch
        self._dfc_alignment_probe: Tensor | None = None  # the first batch of a pre-training epoch
        self.dfc_record_steps = False  # set by diagnostics callbacks: keep the last wake/sleep step
        self.dfc_last_wake: WakeRecord | None = None
        self.dfc_last_sleep_input: Tensor | None = None

    @property
    def dfc_settings(self) -> Settings:
        """``dfc_dynamics``, ``dfc_feedback_config``, ``dfc_updates`` as one bundle, in that order."""
        return Settings(self.dfc_dynamics, self.dfc_feedback_config, self.dfc_updates)

    @property
    def dfc_normalize_lr(self) -> bool:
        """Whether the forward learning rate is divided by the target stepsize (see UpdateConfig)."""
        return self.dfc_method.normalize_lr(self.dfc_updates)

    @property
    def dfc_forward_clip_grouping(self) -> str:
        """``tensor`` or ``layer`` (see :class:`UpdateConfig`)."""
        return self.dfc_method.forward_clip_grouping(self.dfc_updates)

    @property
    def dfc_feedback_clip_grouping(self) -> str:
        """``all`` or ``layer`` (see :class:`FeedbackConfig`)."""
        return self.dfc_method.feedback_clip_grouping(self.dfc_feedback_config)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[forward] or [forward, feedback, pretrain] (trained-feedback variants).

        The forward learning rate is divided by the target stepsize when ``normalize_lr``; the
        feedback optimizers get ``feedback.weight_decay`` as their own weight decay."""
        forward = self._dfc_optimizers["forward"](self.dfc_net.forward_parameters())
        if self.dfc_normalize_lr:
            for group in forward.param_groups:
                group["lr"] = group["lr"] / self.dfc_target_stepsize
        if not self.dfc_method.train_feedback:
            self.dfc_optimizer_settings = optimizer_settings(["forward"], [forward])
            return [forward]
        qs = self.dfc_net.trainable_feedback()
        if not qs:
            raise ValueError("there are no feedback weights to train (a one-layer network with a frozen Q_L)")
        feedback = [self._dfc_optimizers[name](qs) for name in ("feedback", "pretrain")]
        decay = self.dfc_feedback_config.weight_decay
        for name, opt in zip(("feedback_optimizer", "pretrain_optimizer"), feedback):
            for group in opt.param_groups:
                own = group.get("weight_decay")
                if own is None:
                    if decay:
                        raise ValueError(
                            f"{name} ({type(opt).__name__}) has no weight_decay setting, so feedback.weight_decay="
                            f"{decay} cannot be applied; set feedback.weight_decay: 0 or use an optimizer with weight decay"
                        )
                elif own and decay and own != decay:
                    raise ValueError(
                        f"{name} has weight_decay={own} but feedback.weight_decay={decay}: give the feedback "
                        "weight decay in one place (feedback.weight_decay, applied by the optimizer)"
                    )
                elif decay:
                    group["weight_decay"] = decay
        self.dfc_optimizer_settings = optimizer_settings(["forward", "feedback", "pretrain"], [forward, *feedback])
        return [forward, *feedback]

    def dfc_target(self) -> Target:
        """The wake simulation's target (:mod:`~lightning_dfc.core.targets`), configured."""
        return self.dfc_method.wake_target(self.dfc_updates)

    def dfc_update_settings(self, generator: torch.Generator | None = None, world_size: int = 1) -> UpdateSettings:
        """What the method's forward update needs besides the batch; lambda per DDP rank."""
        return self.dfc_method.update_settings(self.dfc_loss, self.dfc_rank_stepsize(world_size), self.dfc_settings,
                                               generator)

    def dfc_rank_stepsize(self, world_size: int = 1) -> float:
        """lambda as each of ``world_size`` DDP ranks passes it to the target (``Target.rank_stepsize``)."""
        return self.dfc_target().rank_stepsize(self.dfc_target_stepsize, world_size)
