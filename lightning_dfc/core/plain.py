"""DFC for plain PyTorch training loops, the way any torch optimizer is used.

    dfc = lightning_dfc.DFC(model, variant="dfc", target_stepsize=0.078)
    opt = torch.optim.Adam(model.parameters(), lr=dfc.forward_lr(1e-4))   # 1e-4 / lambda
    fb_opt = torch.optim.Adam(dfc.feedback_parameters(), lr=5e-4)
    loss = dfc.backward(x, y)   # writes .grad of the model's parameters
    opt.step()
    dfc.sleep(x)                # writes .grad of the feedback weights
    fb_opt.step()

The same engine as :class:`~lightning_dfc.DFCModule` (the method objects of
:mod:`~lightning_dfc.core.methods`); no Lightning involved.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import TARGET_STEPSIZE, FeedbackConfig, Settings, SimulationConfig, UpdateConfig, as_config
from .diagnostics import feedback_condition_2
from .clipping import clip_groups, feedback_clip_groups, forward_clip_groups, write_feedback_grads
from .divergence import DivergenceCheck, advice, stop_if_too_many
from .dynamics import feedforward
from .methods import Method, resolve_method
from .network import DFCNetwork
from .numerics import Numerics, resolve_numerics
from .rules import Update
from .losses import LOSSES, check_loss, loss_value

__all__ = ["DFC"]

_log = logging.getLogger(__name__)


class DFC:
    """Deep Feedback Control as a gradient producer for a plain PyTorch loop.

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` + element-wise activations (parameters shared,
            not copied); the feedback weights Q_i are created here (:meth:`feedback_parameters`).
        variant, loss, target_stepsize, dynamics, feedback, updates, numerics: as for
            :class:`~lightning_dfc.DFCModule` (``variant`` may be a registered name or a
            :class:`~lightning_dfc.core.methods.Method`).
        generator: random generator of the simulations' noise (``None``: torch's global one).

    As in :class:`~lightning_dfc.DFCModule`: the updates written into ``.grad`` are clipped
    (``updates.clip_norm``, ``feedback.clip_norm``, with the method's groupings; ``None`` turns
    clipping off), a cross-entropy network must end linear, diverged batches are skipped and
    ``updates.max_diverged_batches`` consecutive ones stop the run with a
    :class:`~lightning_dfc.core.divergence.DivergenceError`. The optimizer is yours: give it
    :meth:`forward_lr` of the learning rate, which divides it by lambda where the module does
    (``updates.normalize_lr``).
    """

    def __init__(self, model: nn.Module, variant: str | Method = "dfc", *, loss: str = "cross_entropy",
                 target_stepsize: float = TARGET_STEPSIZE, dynamics: SimulationConfig | dict | None = None,
                 feedback: FeedbackConfig | dict | None = None, updates: UpdateConfig | dict | None = None,
                 generator: torch.Generator | None = None, numerics: str | Numerics = "fast") -> None:
        if loss not in LOSSES:  # before anything is built; the output layer is checked below
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if not (isinstance(target_stepsize, (int, float)) and 0 < target_stepsize < float("inf")):
            raise ValueError(f"target_stepsize (lambda) must be a finite positive number, got {target_stepsize!r}")
        self.method = resolve_method(variant)
        self.loss, self.target_stepsize, self.generator = loss, float(target_stepsize), generator
        self.numerics = resolve_numerics(numerics)
        self.dynamics, self.feedback = self.numerics.configure(
            as_config(dynamics, SimulationConfig) or SimulationConfig(),
            (as_config(feedback, FeedbackConfig) or FeedbackConfig()).resolved(self.method.strong))
        self.updates = as_config(updates, UpdateConfig) or UpdateConfig()
        self.method.validate(self.settings)
        self.net = DFCNetwork(model, feedback_init=self.method.feedback_init or "xavier_normal",
                              freeze_output_feedback=self.feedback.freeze_output)
        check_loss(loss, self.net.activations[-1].name)
        self.divergence = DivergenceCheck()
        self.diverged_in_a_row = 0  # consecutive skipped batches, wake and sleep
        self.last_stats: dict[str, Any] = {}

    @property
    def settings(self) -> Settings:
        """``dynamics``, ``feedback``, ``updates`` as one bundle, in that order."""
        return Settings(self.dynamics, self.feedback, self.updates)

    def forward_lr(self, lr: float) -> float:
        """The learning rate to give the forward optimizer for the rate ``lr``: ``lr / lambda``
        where :class:`~lightning_dfc.DFCModule` divides it (``updates.normalize_lr``; on for
        the DFC methods, off for Strong-DFC's, as in the authors' code), else ``lr``."""
        return lr / self.target_stepsize if self.method.normalize_lr(self.updates) else lr

    def feedback_parameters(self) -> list[nn.Parameter]:
        """The feedback weights Q_i that learn (give them their own optimizer)."""
        return self.net.trainable_feedback()

    def forward_parameters(self) -> list[nn.Parameter]:
        """W_1, b_1, ..., W_L, b_L of the model (what :meth:`backward` writes ``.grad`` of)."""
        return self.net.forward_parameters()

    def to(self, *args: Any, **kwargs: Any) -> DFC:
        """Move or cast the feedback weights (the model's own parameters move with the model)."""
        self.net.feedback.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor) -> Update:
        """The forward-weight update of one batch (gradient sign), without writing it anywhere.
        ``x`` (B, ...) as the model takes it; ``y`` labels (B,) or regression targets (B, n_L)."""
        x = self.net.prepare_input(x)
        settings = self.method.update_settings(self.loss, self.target_stepsize, self.settings, self.generator)
        return self.method.forward_update(self.net.params(), x, y, settings, self.method.wake_target(self.updates))

    @torch.no_grad()
    def backward(self, x: Tensor, y: Tensor) -> Tensor:
        """Write the batch's DFC update into ``.grad`` of the model's parameters (and, for
        single-phase methods, of the feedback weights), replacing what was there; return the
        batch-mean loss of the model's output before the update.

        A batch whose dynamics diverged (:mod:`~lightning_dfc.core.divergence`) writes nothing:
        every ``.grad`` is set to ``None`` (optimizers then skip the parameter), a warning is
        logged and ``last_stats["skipped"]`` names the cause."""
        update = self.update(x, y)
        params = self.forward_parameters()
        tensors = update.tensors() + (update.feedback or [])
        cause = self.divergence.cause(update.stats, self.dynamics.noisy, tensors,
                                      params + self.feedback_parameters())
        self.last_stats = {**update.stats, "skipped": cause}
        output = update.output if update.output is not None else feedforward(
            self.net.params(), self.net.prepare_input(x)).r[-1]
        if self._skipped(cause, "wake", self.dynamics, "dynamics", params + self.feedback_parameters()):
            return loss_value(output, y, self.loss)
        for p, g in zip(params, update.tensors()):
            p.grad = g.to(p.dtype)
        self.last_stats["clipped"] = clip_groups(
            forward_clip_groups(self.net, self.method.forward_clip_grouping(self.updates)), self.updates.clip_norm)
        if update.feedback is not None:  # single-phase: the feedback weights' update of the same simulation
            self.last_stats["feedback_clipped"] = self._write_feedback(update.feedback)
        return loss_value(output, y, self.loss)

    def _write_feedback(self, grads: list[Tensor]) -> int:
        """Write the feedback updates (one per Q_i; a frozen Q_L's last) into the trainable Q_i's
        ``.grad`` and clip them (``feedback.clip_norm``); returns how many groups were clipped."""
        updates = write_feedback_grads(self.net, grads)
        groups = feedback_clip_groups(self.net, updates, self.method.feedback_clip_grouping(self.feedback))
        return clip_groups(groups, self.feedback.clip_norm)

    def _skipped(self, cause: str | None, phase: str, simulation: SimulationConfig, where: str,
                 written: list[nn.Parameter]) -> bool:
        """Count the batch; when it diverged (``cause``), clear the ``.grad`` of ``written`` (what
        the batch would have written), warn, and stop after ``updates.max_diverged_batches`` in a
        row (wake and sleep batches together, as in the module)."""
        self.diverged_in_a_row = self.diverged_in_a_row + 1 if cause is not None else 0
        if cause is None:
            return False
        for p in written:
            p.grad = None
        _log.warning("lightning-dfc: %s batch skipped, nothing written to .grad: the dynamics diverged (%s)",
                     phase, cause)
        stop_if_too_many(self.diverged_in_a_row, self.updates.max_diverged_batches, cause, phase,
                         advice(cause, simulation, where))
        return True

    def condition_2(self, x: Tensor) -> float:
        """How well the feedback weights are aligned: Condition 2 at the feedforward points of
        ``x`` (batch mean of ||P Qbar|| / ||Qbar||, in (0, 1]; 1 = aligned). Pre-train with
        :meth:`sleep` (``pretraining=True``) until it passes a threshold, as
        ``feedback.pretrain_until`` does in :class:`DFCModule`."""
        return float(feedback_condition_2(self.net.params(), self.net.prepare_input(x)))

    @torch.no_grad()
    def sleep(self, x: Tensor, y: Tensor | None = None, pretraining: bool = False) -> dict[str, Any]:
        """One feedback-learning (sleep) batch: write the update of the feedback weights into
        their ``.grad`` (``None`` when the batch diverged); return the simulation's statistics.
        Strong-DFC methods drive the output to the labels: pass ``y``. Weight decay
        (``feedback.weight_decay``) is the feedback optimizer's, as in :class:`DFCModule`."""
        if self.method.strong and y is None:
            raise ValueError(f"{self.method.name or self.method.rule} learns its feedback weights with the labels: "
                             "pass y to sleep()")
        grads, stats = self.method.sleep_step(self.net.params(), self.net.prepare_input(x), y, self.loss, self.settings,
                                              pretraining, self.generator)
        cause = self.divergence.cause(stats, True, grads, self.feedback_parameters())
        self.last_stats = {**stats, "skipped": cause}
        if not self._skipped(cause, "sleep", self.feedback.simulation, "feedback.simulation",
                             self.feedback_parameters()):
            self.last_stats["clipped"] = self._write_feedback(grads)
        return self.last_stats
