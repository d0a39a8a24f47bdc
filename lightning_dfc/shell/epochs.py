"""Lightning counts every epoch; a DFC run's user counts wake epochs (``trainer.max_epochs`` is
their number). The places where Lightning's count would reach the user speak in wake epochs here:
the message that ends a fit and, with ``feedback.validate: false``, the validation passes (after
wake epochs only: pre-training and sleep epochs leave the forward weights as they were)."""

from __future__ import annotations

import logging
import re
from typing import Any

from ..core.schedule import Phase, PhaseSchedule

__all__ = ["STOP_LOGGER", "WakeEpochStopMessage", "plural", "validate_in_epoch"]

STOP_LOGGER = "lightning.pytorch.utilities.rank_zero"  # where Lightning's fit loop says why it stopped


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class WakeEpochStopMessage(logging.Filter):
    """Rewrites Lightning's "`Trainer.fit` stopped: `max_epochs=N` reached." (N counts every
    epoch) into the wake epochs the user asked for, with how the N epochs divide.

    Args:
        schedule: the run's phase schedule (read when the message comes: pre-training may have
            ended early).
        wake_epochs: the wake epochs asked for (``trainer.max_epochs`` before the translation).
    """

    PATTERN = re.compile(r"^`Trainer\.fit` stopped: `max_epochs=(\d+)` reached\.$")

    def __init__(self, schedule: Any, wake_epochs: int) -> None:
        super().__init__()
        self.schedule, self.wake_epochs = schedule, wake_epochs

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        if match:
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


def validate_in_epoch(trainer: Any, run: bool, limit: int | float) -> None:
    """Run the validation pass at the end of the epoch that starts (``run``, with the user's
    ``limit_val_batches`` ``limit``) or skip it (``trainer.limit_val_batches`` 0 for the epoch:
    Lightning validates only while it is positive)."""
    trainer.limit_val_batches = limit if run else 0
