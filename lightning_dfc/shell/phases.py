"""The schedule half of :class:`~lightning_dfc.DFCMixin`: which phase an epoch runs, the
translation of ``max_epochs`` to wake epochs, reproducible per-epoch randomness and the
checkpointed state."""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from typing import Any

import torch

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..core.diagnostics import feedback_condition_2
from ..core.schedule import Phase, PhaseInfo
from .distributed import check_precision, check_strategy
from .epochs import (WakeEpochStopMessage, fit_running, install_stop_message, name_by_wake_epoch, names_by_wake_epoch,
                     plural, remove_stop_message, restore_val_limit, users_val_limit, validate_in_epoch)
from .lightning_internals import (attached_trainer, epochs_processed, save_last_checkpoint, set_max_steps,
                                  train_progress_bar)
from .resume import apply_optimizer_changes, check_resume, schedule_record, settings_record
from .summary import PhaseClock, fit_summary

__all__ = ["DFCPhases"]


class DFCPhases:
    """Epoch-level hooks of a DFC module (part of :class:`DFCMixin`)."""

    @property
    def dfc_phase(self) -> PhaseInfo:
        """The phase of the current epoch (a pure function of ``current_epoch``)."""
        return self.dfc_schedule(self.current_epoch)

    def configure_callbacks(self):
        """Lightning calls this before it checks the trainer against manual optimization: refuse
        the trainer options DFC replaces, pointing at the DFC settings instead."""
        trainer = attached_trainer(self)
        if trainer is not None:
            if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
                raise ValueError(
                    f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) does not apply to DFC's hand-written "
                    "updates: remove it and set updates.clip_norm (forward weights) and feedback.clip_norm "
                    "(feedback weights) instead.")
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) is not supported: each DFC "
                    "update is computed from one batch's simulation. Remove it and use a larger data.batch_size "
                    "(and, with DDP, more devices) instead.")
        return super().configure_callbacks()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if attached_trainer(self) is None:
            return
        check_strategy(self.trainer.strategy)
        check_precision(self.trainer.precision)
        if str(self.trainer.precision) in ("64-true", "64"):
            # Lightning restores a checkpoint's weights before converting the module: convert
            # first so that float64 weights are restored exactly.
            self.double()
        if stage == "fit":
            for callback in self.trainer.callbacks:
                wake_epochs_only(callback)
                names_by_wake_epoch(callback)  # decided before a name is set
        loop = self.trainer.fit_loop
        if stage == "fit" and self._dfc_translated_loop is not loop:
            # trainer.max_epochs counts forward-weight (wake) epochs, as in the paper (once per
            # Trainer: the same module may be fit again by another Trainer).
            self._dfc_translated_loop = loop
            if loop.max_epochs is not None and loop.max_epochs > 0:
                self._dfc_forward_epochs = loop.max_epochs
                loop.max_epochs = self.dfc_schedule.total_epochs(loop.max_epochs)

    def _dfc_epoch_seed(self, epoch: int) -> int:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return (seed * 1_000_003 + epoch * 7919) % (2**62)

    def on_fit_end(self) -> None:
        super().on_fit_end()
        # trainer.log_dir broadcasts rank 0's under DDP: every rank asks, before rank 0 prints
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if self.trainer.is_global_zero:
            for line in fit_summary(self.trainer, self, self._dfc_clock, self._dfc_skipped_total, log_dir):
                _console.info(line)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.fast_dev_run and self.dfc_method.train_feedback:
            # fast_dev_run=N means N batches; each takes a sleep and a wake step here
            set_max_steps(self.trainer, 2 * int(self.trainer.fast_dev_run))
        self._dfc_clock = PhaseClock()
        self._dfc_skipped_total = {"wake": 0, "sleep": 0}
        # Every epoch's randomness (shuffling, sleep noise) derives from (seed, epoch, rank), so a
        # run resumed from a checkpoint repeats the uninterrupted run exactly. Lightning creates the
        # first epoch's data iterator before on_train_epoch_start, and later ones after
        # on_train_epoch_end: reseed the global RNG (shuffling) at those two points. When resuming,
        # the loop state is restored only after this hook: on_load_checkpoint noted the epoch.
        start = self._dfc_resume_epoch if self._dfc_resume_epoch is not None else self.current_epoch
        torch.manual_seed(self._dfc_epoch_seed(start))
        users_val_limit(self.trainer)  # noted before any epoch switches validation off
        if self._dfc_forward_epochs is not None:
            module = weakref.ref(self)  # the logger outlives the module: no strong reference
            self._dfc_stop_message = WakeEpochStopMessage(
                lambda: module().dfc_schedule, self._dfc_forward_epochs, lambda: fit_running(module()))
            install_stop_message(self._dfc_stop_message)

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if self._dfc_stop_message is not None:
            remove_stop_message(self._dfc_stop_message)
            self._dfc_stop_message = None
        if attached_trainer(self) is not None:
            restore_val_limit(self.trainer)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.dfc_phase.phase is Phase.PRETRAIN:
            self._dfc_end_of_pretrain_epoch()
        self._dfc_clock.stop()
        self._dfc_check_skipped_fraction()
        torch.manual_seed(self._dfc_epoch_seed(self.current_epoch + 1))

    @property
    def dfc_phase_description(self) -> str:
        """The current epoch in words (``pre-training 3/10``, ``wake 1/100``, ...; ``pre-training
        3/≤10`` while pre-training may end early, see ``feedback.pretrain_until``)."""
        return self.dfc_schedule.describe(self.current_epoch, self._dfc_forward_epochs,
                                          pretrain_open=self.dfc_feedback_config.pretrain_until is not None)

    # ------------------------------------------------------------------ pre-training until aligned
    @torch.no_grad()
    def dfc_feedback_condition_2(self, x: torch.Tensor) -> float:
        """Condition 2 of the current feedback weights on inputs ``x`` (B, n_0): the batch mean of
        ||P Qbar|| / ||Qbar|| (1 = every column of Qbar in the row space of the Jacobian), averaged
        over DDP ranks."""
        value = feedback_condition_2(self.dfc_net.params(), self.dfc_net.prepare_input(x))
        if attached_trainer(self) is not None and self.trainer.world_size > 1:
            value = self.trainer.strategy.reduce(value, reduce_op="mean")
        return float(value)

    def _dfc_end_of_pretrain_epoch(self) -> None:
        """Measure and log Condition 2 (``pretrain/condition_2``) on the epoch's first batch; end
        the pre-training when it reached ``feedback.pretrain_until`` or levelled off."""
        probe, self._dfc_alignment_probe = self._dfc_alignment_probe, None
        if probe is None:
            return
        previous = self._dfc_pretrain_condition_2
        value = self._dfc_pretrain_condition_2 = self.dfc_feedback_condition_2(probe)
        self.log("pretrain/condition_2", value, on_step=False, on_epoch=True)
        cfg = self.dfc_feedback_config
        if cfg.pretrain_until is None:
            return
        ran, most = self.current_epoch + 1, cfg.pretrain_epochs
        reached = value >= cfg.pretrain_until
        levelled = not reached and previous is not None and value - previous < cfg.pretrain_min_gain
        if (reached or levelled) and ran < self.dfc_schedule.pretrain_epochs:
            self._dfc_end_pretraining(ran)
        if not self.trainer.is_global_zero:
            return
        if reached:
            _console.info("lightning-dfc: feedback pre-training reached Condition 2 = %.3f >= %g after %d of at most "
                          "%s; the wake epochs begin.", value, cfg.pretrain_until, ran, plural(most, "epoch"))
        elif levelled:
            _console.info("lightning-dfc: feedback pre-training levelled off at Condition 2 = %.3f (%+.4f in the last "
                          "epoch, below pretrain_min_gain %g) after %d of at most %s; the wake epochs begin.",
                          value, value - previous, cfg.pretrain_min_gain, ran, plural(most, "epoch"))
        elif ran == self.dfc_schedule.pretrain_epochs:
            _console.warning(
                "lightning-dfc: feedback pre-training used %s and reached Condition 2 = %.3f < %g "
                "(feedback.pretrain_until): the updates will be less aligned with Gauss-Newton than asked. Raise "
                "feedback.pretrain_epochs (its upper limit) or lower feedback.pretrain_until.",
                f"all {ran} epochs" if ran > 1 else "its 1 epoch", value, cfg.pretrain_until)

    def _dfc_end_pretraining(self, epochs: int) -> None:
        """Make ``epochs`` the number of pre-training epochs of this run (the wake/sleep cycle
        starts at that Lightning epoch); the trainer's epoch limit follows."""
        self.dfc_schedule = dataclasses.replace(self.dfc_schedule, pretrain_epochs=epochs)
        if self._dfc_forward_epochs is not None and attached_trainer(self) is not None:
            self.trainer.fit_loop.max_epochs = self.dfc_schedule.total_epochs(self._dfc_forward_epochs)

    def _dfc_show_phase(self) -> None:
        """Put the phase in words on the progress bar, where Lightning wrote ``Epoch N``."""
        tqdm_bar = train_progress_bar(self.trainer)
        if tqdm_bar is not None:
            tqdm_bar.set_description(self.dfc_phase_description)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._dfc_epoch_batches = self._dfc_epoch_skipped = 0
        self._dfc_generator = torch.Generator(device=self.device)
        self._dfc_generator.manual_seed(self._dfc_epoch_seed(self.current_epoch) + 104_729 * (self.global_rank + 1))
        info = self.dfc_phase
        self._dfc_clock.start(info.phase.value)
        self._dfc_show_phase()
        if info.phase is Phase.WAKE:
            name_by_wake_epoch(self.trainer.checkpoint_callbacks, info.forward_epoch + 1)
        validate = info.phase is Phase.WAKE or self.dfc_feedback_config.validate or bool(self.trainer.fast_dev_run)
        validate_in_epoch(self.trainer, validate, users_val_limit(self.trainer))
        self.log("phase", float(info.phase.code), on_step=False, on_epoch=True)
        self.log("wake_epoch", float(info.forward_epoch + 1), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dfc"] = {
            "diverged_in_a_row": self._dfc_diverged_in_a_row,
            "forward_epochs": self._dfc_forward_epochs,
            "variant": self.dfc_variant,
            "sizes": list(self.dfc_net.sizes),
            "schedule": schedule_record(self),
            "pretrain_ran": self._dfc_pretrain_ended_early,
            "pretrain_condition_2": self._dfc_pretrain_condition_2,
            "settings": settings_record(self),
        }

    @property
    def _dfc_pretrain_ended_early(self) -> int | None:
        """The pre-training epochs that ran, if ``pretrain_until`` ended it before its limit."""
        ran = self.dfc_schedule.pretrain_epochs
        return ran if ran != self.dfc_feedback_config.pretrain_epochs else None

    def on_train_start(self) -> None:
        super().on_train_start()
        if getattr(self, "_dfc_resumed_settings", None) is not None:  # the optimizers' states are restored now
            apply_optimizer_changes(self, self._dfc_resumed_settings, self.trainer.optimizers)
            self._dfc_resumed_settings = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dfc", {})
        if attached_trainer(self) is not None and self.trainer.state.fn == "fit":
            check_resume(self, state)
            self._dfc_resumed_settings = state.get("settings")  # its optimizers: at on_train_start
        self._dfc_diverged_in_a_row = int(state.get("diverged_in_a_row", 0))
        self._dfc_pretrain_condition_2 = state.get("pretrain_condition_2")
        if state.get("pretrain_ran") is not None:  # the pre-training had ended early: so it stays
            self._dfc_end_pretraining(int(state["pretrain_ran"]))
        self._dfc_resume_epoch = epochs_processed(checkpoint)


_console = logging.getLogger("lightning.pytorch")  # Lightning's console logger (INFO and up)

def wake_epochs_only(callback: Any) -> None:
    """Let a monitoring callback (``EarlyStopping``, ``ModelCheckpoint`` with a ``monitor``) act
    at the end of wake epochs only: during pre-training and sleep epochs the forward weights do
    not change, so their metrics are flat (``EarlyStopping`` would stop a run before its first
    wake epoch) or absent (``train_*``). A monitoring ``ModelCheckpoint`` with ``save_last``
    refreshes ``last.ckpt`` after every epoch (:func:`refresh_last_checkpoint`), so a run
    resumes where it stopped."""
    watched = isinstance(callback, EarlyStopping) or (
        isinstance(callback, ModelCheckpoint) and callback.monitor is not None)
    if not watched or getattr(callback, "_dfc_wake_only", False):
        return
    for hook in ("on_train_epoch_end", "on_validation_end"):
        original = getattr(callback, hook)

        def wrapped(trainer, pl_module, _original=original, _hook=hook):
            phase = getattr(pl_module, "dfc_phase", None)  # the module being fit, not a remembered one
            result = _original(trainer, pl_module) if phase is None or phase.phase is Phase.WAKE else None
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                refresh_last_checkpoint(callback, trainer, _hook)
            return result

        setattr(callback, hook, wrapped)
    callback._dfc_wake_only = True


def refresh_last_checkpoint(callback: ModelCheckpoint, trainer: Any, hook: str) -> None:
    """Write ``callback``'s ``last.ckpt`` at the end of this epoch (in ``hook``, the one in which
    it saves) unless a checkpoint was saved at this step already. Lightning's ``save_last`` writes
    it only together with a new top-k checkpoint, so after a wake epoch that did not improve the
    monitored value, and after every pre-training or sleep epoch, ``last.ckpt`` would lag behind
    the run, and a resume from it would repeat epochs. (Lightning has no public hook for this:
    :func:`~lightning_dfc.shell.lightning_internals.save_last_checkpoint`.)"""
    save_last_checkpoint(callback, trainer, hook)
