"""The step half of :class:`~lightning_dfc.DFCMixin`: each training batch asks the method object
for its update and applies it: write ``.grad``, sync across ranks, clip, step, log. Diverged
batches are skipped and counted."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.clipping import clip_groups, feedback_clip_groups, forward_clip_groups, write_feedback_grads
from ..core.divergence import CAUSE_WORDS, DivergenceError, advice, stop_if_too_many
from ..core.dynamics import feedforward
from ..core.network import LayerParams
from ..core.losses import loss_value
from ..core.rules import Update
from ..core.schedule import Phase
from .distributed import sync_step

__all__ = ["DFCSteps", "WakeRecord", "DivergenceError"]


@dataclass
class WakeRecord:
    """What a wake step saw and did, for diagnostics (recorded only on request).

    Attributes:
        x: flattened input (B, n_0); y: targets.
        params: the network's tensors *before* the step (cloned).
        update: the update written to ``.grad`` after syncing and clipping, W_1, b_1, ...
        stats: simulation statistics of the step.
    """

    x: Tensor
    y: Tensor
    params: LayerParams
    update: list[Tensor]
    stats: dict[str, float]


class DFCSteps:
    """Training-step logic of a DFC module (part of :class:`DFCMixin`)."""

    def dfc_unpack_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of a batch; override for other batch layouts."""
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0], batch[1]
        if isinstance(batch, dict) and {"x", "y"} <= batch.keys():
            return batch["x"], batch["y"]
        raise ValueError(
            "cannot read the batch: expected (inputs, targets) or a dict with 'x' and 'y'; "
            "override dfc_unpack_batch() for other layouts"
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.dfc_unpack_batch(batch)
        x = self._dfc_checked_input(x, y, batch_idx)
        phase = self.dfc_phase.phase
        with torch.no_grad():
            if self.trainer.fast_dev_run and self.dfc_method.train_feedback:
                # One fast_dev_run step exercises both phases.
                self._dfc_sleep_step(x, y, Phase.SLEEP)
                self._dfc_wake_step(x, y)
            elif phase is Phase.WAKE:
                self._dfc_wake_step(x, y)
            else:
                if phase is Phase.PRETRAIN and batch_idx == 0:
                    self._dfc_alignment_probe = x  # Condition 2 is measured on it at the epoch's end
                self._dfc_sleep_step(x, y, phase)

    def _dfc_checked_input(self, x: Tensor, y: Tensor, batch_idx: int) -> Tensor:
        x = self.dfc_net.prepare_input(x)
        if x.shape[0] == 0:
            raise ValueError(f"batch {batch_idx} is empty (B = 0): every DFC update is a batch mean. Make the data "
                             "loader skip empty batches (e.g. filter them in its sampler or collate_fn).")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"batch {batch_idx}: {x.shape[0]} inputs but {y.shape[0]} targets")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"batch {batch_idx}: the inputs contain NaN or inf values; clean the data")
        n_out = self.dfc_net.sizes[-1]
        if self.dfc_loss == "cross_entropy":
            if y.dtype.is_floating_point or y.dim() != 1:
                raise ValueError(f"batch {batch_idx}: cross_entropy needs integer labels of shape (B,), got {tuple(y.shape)} {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_out):
                raise ValueError(f"batch {batch_idx}: labels must lie in [0, {n_out}), got [{int(y.min())}, {int(y.max())}]")
        else:
            if y.shape != (x.shape[0], n_out):
                raise ValueError(f"batch {batch_idx}: mse targets must have shape (B, {n_out}), got {tuple(y.shape)}")
            if not bool(torch.isfinite(y).all()):
                raise ValueError(f"batch {batch_idx}: the targets contain NaN or inf values; clean the data")
        return x

    def dfc_wake_update(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                        world_size: int = 1) -> Update:
        """The forward-weight update of one wake batch, as the training step computes it (no
        clipping, no optimizer step). Single-phase Strong-DFC also returns the feedback-weight
        update of the same simulation (``Update.feedback``).

        Args:
            x: flattened input (B, n_0); y: labels (B,) or regression targets (B, n_L).
            generator: the noise's random generator (noisy dynamics).
            world_size: number of DDP ranks: lambda multiplies the gradient of the *global*
                batch's loss, and each rank sees 1/world_size of the batch (``dfc_rank_stepsize``).
        """
        return self.dfc_method.forward_update(self.dfc_net.params(), x, y, self.dfc_update_settings(generator, world_size),
                                              self.dfc_target())

    def dfc_sleep_update(self, x: Tensor, y: Tensor, pretraining: bool,
                         generator: torch.Generator | None = None) -> tuple[list[Tensor], dict[str, float]]:
        """The feedback-weight update of one sleep (or pre-training) batch, as the training step
        computes it (no clipping, no weight decay: the optimizer adds it). One tensor per Q_i.

        DFC: the controller holds the feedforward output against the noise. Strong-DFC: it drives
        the output to the label; in pre-training (``pretrain_mode='published'``) with the linear
        error, as the authors' runs did."""
        return self.dfc_method.sleep_step(self.dfc_net.params(), x, y, self.dfc_loss, self.dfc_settings, pretraining,
                                          generator)

    def _dfc_wake_step(self, x: Tensor, y: Tensor) -> None:
        net = self.dfc_net
        params = net.params()
        update = self.dfc_wake_update(x, y, self._dfc_generator, self.trainer.world_size)
        tensors = update.tensors()
        stats = update.stats
        feedback_grads = update.feedback
        updates = tensors + (feedback_grads or [])
        cause = self._dfc_divergence.cause(stats, self.dfc_dynamics.noisy, updates,
                                           net.forward_parameters() + net.trainable_feedback())
        logged = {"steps": "steps", "non_converged": "non_converged", "diverged": "diverged_samples",
                  "excluded": "excluded", "control_loss": "control_loss"}
        self.log_dict(
            {f"dfc/{logged[k]}": float(v) for k, v in stats.items() if k in logged and math.isfinite(float(v))},
            on_step=True,
            on_epoch=True,
        )
        self.log("dfc/error_ratio", _loggable(stats.get("error_ratio", 0.0)), on_step=True, on_epoch=True)
        forward_opt = self._dfc_opts()[0]
        forward_opt.zero_grad()
        params_list = net.forward_parameters()
        for p, g in zip(params_list, tensors):
            p.grad = g.to(p.dtype)
        feedback = None if feedback_grads is None else self._dfc_set_feedback_grads(feedback_grads, self._dfc_opts()[1])
        diverged = sync_step(self.trainer.strategy, cause is not None, [p.grad for p in params_list] + (feedback or []))
        if self._dfc_skip_if_diverged(diverged, cause, "wake", stats):
            _clear_grads(self.dfc_net.forward_parameters() + self.dfc_net.trainable_feedback())
            return
        self._dfc_diverged_in_a_row = 0
        clipped = clip_groups(forward_clip_groups(self.dfc_net, self.dfc_forward_clip_grouping), self.dfc_updates.clip_norm)
        if self.dfc_record_steps:
            self.dfc_last_wake = WakeRecord(
                x=x,
                y=y,
                params=params._replace(
                    weights=tuple(w.clone() for w in params.weights),
                    biases=tuple(None if b is None else b.clone() for b in params.biases),
                    feedback=tuple(q.clone() for q in params.feedback),
                ),
                update=[p.grad.detach().clone() for p in params_list],
                stats=dict(stats),
            )
        forward_opt.step()
        self.log("dfc/clipped", float(clipped), on_step=True, on_epoch=True, reduce_fx="sum")
        if feedback is not None:  # single-phase: Q learns from the same simulation
            self._dfc_apply_feedback(feedback, self._dfc_opts()[1], "dfc/feedback_clipped")
        # the output before the step, the one the update came from
        output = update.output if update.output is not None else feedforward(params, x).r[-1]
        self.dfc_train_loss(loss_value(output, y, self.dfc_loss))
        self.log("train_loss", self.dfc_train_loss, on_step=True, on_epoch=True, prog_bar=True)
        if self.dfc_train_acc is not None:
            self.dfc_train_acc(output, y)
            self.log("train_acc", self.dfc_train_acc, on_step=False, on_epoch=True, prog_bar=True)

    def _dfc_sleep_step(self, x: Tensor, y: Tensor, phase: Phase) -> None:
        if self.dfc_record_steps:
            self.dfc_last_sleep_input = x
        pretraining = phase is Phase.PRETRAIN
        grads, stats = self.dfc_sleep_update(x, y, pretraining, self._dfc_generator)
        cause = self._dfc_divergence.cause(stats, True, grads, self.dfc_net.trainable_feedback())
        self.log("sleep/error_ratio", _loggable(stats.get("error_ratio", 0.0)), on_step=False, on_epoch=True)
        opt = self._dfc_opts()[2 if pretraining else 1]
        feedback = self._dfc_set_feedback_grads(grads, opt)
        diverged = sync_step(self.trainer.strategy, cause is not None, feedback)
        if self._dfc_skip_if_diverged(diverged, cause, "sleep", stats):
            _clear_grads(self.dfc_net.forward_parameters() + self.dfc_net.trainable_feedback())
            return
        self._dfc_apply_feedback(feedback, opt, "sleep/clipped")
        self.log("sleep/control_norm", stats["control_norm"], on_step=True, on_epoch=True)

    def _dfc_set_feedback_grads(self, grads: list[Tensor], opt) -> list[Tensor]:
        """Zero ``opt``'s gradients, then :func:`~lightning_dfc.core.clipping.write_feedback_grads`."""
        opt.zero_grad()
        return write_feedback_grads(self.dfc_net, grads)

    def _dfc_apply_feedback(self, feedback: list[Tensor], opt, clip_log: str) -> None:
        """Clip the feedback updates (from :meth:`_dfc_set_feedback_grads`, averaged over ranks)
        and step ``opt``."""
        cfg = self.dfc_feedback_config
        clipped = clip_groups(feedback_clip_groups(self.dfc_net, feedback, self.dfc_feedback_clip_grouping),
                              cfg.clip_norm)
        if cfg.clip_norm is not None:
            self.log(clip_log, float(clipped), on_step=False, on_epoch=True, reduce_fx="sum")
        opt.step()

    def _dfc_opts(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def _dfc_skip_if_diverged(self, diverged: bool, cause: str | None, phase: str, stats: dict[str, float]) -> bool:
        """Count the batch; if ``diverged`` (this rank's ``cause``, or another rank's: :func:`sync_step`),
        skip it: count, log, warn, maybe stop."""
        prefix = "dfc" if phase == "wake" else "sleep"
        self._dfc_epoch_batches += 1
        self.log(f"{prefix}/diverged", float(diverged), on_step=False, on_epoch=True, reduce_fx="sum")
        if not diverged:
            self._dfc_diverged_in_a_row = 0
            return False
        cause = cause or "another rank"
        self._dfc_epoch_skipped += 1
        self._dfc_skipped_total[phase] += 1
        self._dfc_last_cause = (cause, phase)
        self._dfc_diverged_in_a_row += 1
        if self._dfc_diverged_in_a_row == 1 and self._dfc_warned_epoch != self.current_epoch:
            self._dfc_warned_epoch = self.current_epoch  # the first skip of a burst, once per epoch
            _console.warning(
                "lightning-dfc: %s batch %d of epoch %d skipped, nothing applied: %s (error ratio %.3g, state "
                "ratio %.3g). Further skips are counted in %s/skipped_batches.", phase, self._dfc_epoch_batches,
                self.current_epoch, CAUSE_WORDS.get(cause, cause), stats.get("error_ratio", 0.0),
                stats.get("state_ratio", 0.0), prefix)
        stop_if_too_many(self._dfc_diverged_in_a_row, self.dfc_updates.max_diverged_batches, cause, phase,
                         self._dfc_advice(cause, phase))
        return True

    def _dfc_advice(self, cause: str, phase: str) -> str:
        if phase == "wake":
            return advice(cause, self.dfc_dynamics, "dynamics")
        return advice(cause, self.dfc_feedback_config.simulation, "feedback.simulation")

    def _dfc_check_skipped_fraction(self) -> None:
        """At the end of an epoch: log how many of its batches were skipped (``dfc/skipped_batches``
        in wake epochs, ``sleep/skipped_batches`` in sleep and pre-training epochs; 0 too, so that
        the column is always there), and stop if more than ``updates.max_skipped_fraction`` were."""
        batches, skipped = self._dfc_epoch_batches, self._dfc_epoch_skipped
        prefix = "dfc" if self.dfc_phase.phase is Phase.WAKE else "sleep"
        self.log(f"{prefix}/skipped_batches", float(skipped), on_step=False, on_epoch=True)
        if batches and skipped / batches > self.dfc_updates.max_skipped_fraction:
            cause, phase = self._dfc_last_cause
            raise DivergenceError(
                f"{skipped} of {batches} {phase} batches of epoch {self.current_epoch} were skipped because their "
                f"dynamics diverged ({CAUSE_WORDS.get(cause, cause)}), more than updates.max_skipped_fraction = "
                f"{self.dfc_updates.max_skipped_fraction:g}. Remedy: {self._dfc_advice(cause, phase)}."
            )


_console = logging.getLogger("lightning.pytorch")  # Lightning's console logger (INFO and up)

def _clear_grads(params: list[Tensor]) -> None:
    """Drop a skipped batch's updates from the parameters' ``.grad``."""
    for p in params:
        p.grad = None


def _loggable(value: float) -> float:
    """A finite stand-in for an infinite ratio (loggers average it)."""
    return value if math.isfinite(value) else 1e300
