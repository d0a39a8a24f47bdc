"""Lightning counts every epoch; a DFC run's user counts wake epochs (``trainer.max_epochs`` is
their number). The places where Lightning's count would reach the user speak in wake epochs here:
the message that ends a fit, the names of the checkpoints kept for a monitored metric, and the
validation passes (after wake epochs only, unless ``feedback.validate: true``: pre-training and
sleep epochs leave the forward weights as they were)."""

from __future__ import annotations

import logging
import re
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerStatus

from ..core.schedule import Phase, PhaseSchedule
from .lightning_internals import attached_trainer

__all__ = ["STOP_LOGGER", "WakeEpochStopMessage", "fit_running", "install_stop_message", "name_by_wake_epoch",
           "names_by_wake_epoch", "plural", "remove_stop_message", "restore_val_limit", "users_val_limit",
           "validate_in_epoch"]

STOP_LOGGER = "lightning.pytorch.utilities.rank_zero"  # where Lightning's fit loop says why it stopped


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 epoch``, ``2 epochs`` (``nouns``: the plural where it is not ``noun + "s"``)."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


class WakeEpochStopMessage(logging.Filter):
    """Rewrites Lightning's "`Trainer.fit` stopped: `max_epochs=N` reached." (N counts every
    epoch) into the wake epochs the user asked for, with how the N epochs divide.

    Args:
        schedule: the run's phase schedule (read when the message comes: pre-training may have
            ended early).
        wake_epochs: the wake epochs asked for (``trainer.max_epochs`` before the translation).
        active: whether the fit that installed the filter is still running. A fit that raises
            never reaches the module's ``teardown``: its filter stays on the logger, inactive,
            until the next fit's :func:`install_stop_message` removes it.
    """

    PATTERN = re.compile(r"^`Trainer\.fit` stopped: `max_epochs=(\d+)` reached\.$")

    def __init__(self, schedule: Any, wake_epochs: int, active: Any = lambda: True) -> None:
        super().__init__()
        self.schedule, self.wake_epochs, self.active = schedule, wake_epochs, active

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        if match and self.active():
            record.msg, record.args = self.message(int(match.group(1))), ()
        return True

    def message(self, epochs: int) -> str:
        schedule: PhaseSchedule = self.schedule()
        counts = {phase: 0 for phase in Phase}
        for epoch in range(epochs):
            counts[schedule(epoch).phase] += 1
        parts = [plural(counts[Phase.PRETRAIN], "pre-training epoch"), plural(counts[Phase.SLEEP], "sleep epoch"),
                 plural(counts[Phase.WAKE], "wake epoch")]
        return (f"`Trainer.fit` stopped: {plural(self.wake_epochs, 'wake epoch')} reached (max_epochs="
                f"{self.wake_epochs}; Lightning counted {epochs} epochs: {', '.join(parts)}).")


def fit_running(module: Any) -> bool:
    """Whether ``module`` (None once garbage-collected) is in a fit that has neither ended nor raised."""
    trainer = None if module is None else attached_trainer(module)
    return trainer is not None and trainer.state.status == TrainerStatus.RUNNING


def install_stop_message(message: WakeEpochStopMessage) -> None:
    """Put ``message`` on Lightning's stop logger, in place of any left by an earlier fit."""
    logger = logging.getLogger(STOP_LOGGER)
    for stale in [f for f in logger.filters if isinstance(f, WakeEpochStopMessage)]:
        logger.removeFilter(stale)
    logger.addFilter(message)


def remove_stop_message(message: WakeEpochStopMessage) -> None:
    """Take ``message`` off Lightning's stop logger (at the end of its fit)."""
    logging.getLogger(STOP_LOGGER).removeFilter(message)


def names_by_wake_epoch(callback: Any) -> bool:
    """Whether ``callback`` is a ``ModelCheckpoint`` whose files :func:`name_by_wake_epoch` names:
    one with a ``monitor`` (it saves after wake epochs only, ``wake_epochs_only``) and without a
    ``filename`` of the user's. Marks it, so that the answer stays once the name is set."""
    if not hasattr(callback, "_dfc_wake_named"):
        callback._dfc_wake_named = (isinstance(callback, ModelCheckpoint) and callback.monitor is not None
                                    and callback.filename is None)
    return callback._dfc_wake_named


def name_by_wake_epoch(callbacks: Any, wake_epoch: int) -> None:
    """Name the checkpoints that the wake epoch ``wake_epoch`` (1-based) saves ``wake_epoch=3.ckpt``
    instead of Lightning's ``epoch=11-step=516.ckpt`` (11 Lightning epochs: pre-training and
    sleep epochs count there), in the callbacks that :func:`names_by_wake_epoch` picks."""
    for callback in callbacks:
        if names_by_wake_epoch(callback):
            callback.filename = f"wake_epoch={wake_epoch}"


def users_val_limit(trainer: Any) -> int | float:
    """The user's ``limit_val_batches`` of ``trainer``, noted on it at the first fit that asks
    (:func:`validate_in_epoch` sets the trainer's own to 0 in skipped epochs): a fit that raised
    in such an epoch never restored it, and the next fit on the same trainer still finds the
    user's value here. :func:`restore_val_limit` puts it back."""
    if getattr(trainer, "_dfc_users_val_limit", None) is None:
        trainer._dfc_users_val_limit = trainer.limit_val_batches
    return trainer._dfc_users_val_limit


def restore_val_limit(trainer: Any) -> None:
    """Give ``trainer`` back the user's ``limit_val_batches`` (after a fit)."""
    limit = getattr(trainer, "_dfc_users_val_limit", None)
    if limit is not None:
        trainer.limit_val_batches, trainer._dfc_users_val_limit = limit, None


def validate_in_epoch(trainer: Any, run: bool, limit: int | float) -> None:
    """Run the validation pass at the end of the epoch that starts (``run``, with the user's
    ``limit_val_batches`` ``limit``) or skip it (``trainer.limit_val_batches`` 0 for the epoch:
    Lightning validates only while it is positive)."""
    trainer.limit_val_batches = limit if run else 0
