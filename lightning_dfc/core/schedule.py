"""The wake/sleep schedule as a pure function of the Lightning epoch index.

The reference implementation (utils/train.py) runs ``pretrain`` feedback (sleep) epochs before
training, then for every forward-weight (wake) epoch: ``sleep_before`` sleep epochs (1 in the
reference), the wake epoch, and ``sleep_after`` sleep epochs (``extra_fb_epochs``). Lightning
sees one epoch per phase; the schedule maps its epoch index to the phase. Because it depends on
the epoch index only, it is the same on every rank and survives resuming from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Phase", "PhaseInfo", "PhaseSchedule"]


class Phase(str, Enum):
    PRETRAIN = "pretrain"  # feedback pre-training (sleep, its own optimizer)
    SLEEP = "sleep"  # feedback-weight epoch
    WAKE = "wake"  # forward-weight epoch

    @property
    def code(self) -> int:
        """Numeric id for logging: 0 pretrain, 1 sleep, 2 wake."""
        return {"pretrain": 0, "sleep": 1, "wake": 2}[self.value]


@dataclass(frozen=True)
class PhaseInfo:
    """What Lightning epoch ``epoch`` is.

    Attributes:
        phase: pretrain, sleep or wake.
        forward_epoch: index of the forward-weight epoch this epoch belongs to (-1 during
            pre-training).
    """

    phase: Phase
    forward_epoch: int


@dataclass(frozen=True)
class PhaseSchedule:
    """Pre-training, then (sleep_before x sleep, 1 x wake, sleep_after x sleep) per forward epoch.

    Args:
        pretrain_epochs: feedback pre-training epochs before the first forward epoch.
        sleep_before: sleep epochs before each wake epoch (1 in the reference).
        sleep_after: sleep epochs after each wake epoch (``extra_fb_epochs``, 2 in the configs).
        train_feedback: ``False`` for fixed feedback, DFA and BP: every epoch is a wake epoch.
    """

    pretrain_epochs: int = 10
    sleep_before: int = 1
    sleep_after: int = 2
    train_feedback: bool = True

    def __post_init__(self) -> None:
        for name in ("pretrain_epochs", "sleep_before", "sleep_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"PhaseSchedule: {name} must be a non-negative integer, got {value!r}")

    @property
    def cycle(self) -> int:
        """Lightning epochs per forward-weight epoch."""
        return 1 + self.sleep_before + self.sleep_after if self.train_feedback else 1

    @property
    def pretrain(self) -> int:
        return self.pretrain_epochs if self.train_feedback else 0

    def total_epochs(self, forward_epochs: int) -> int:
        """Lightning epochs needed for ``forward_epochs`` forward-weight epochs."""
        return self.pretrain + forward_epochs * self.cycle

    def __call__(self, epoch: int) -> PhaseInfo:
        """The phase of Lightning epoch ``epoch`` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self.pretrain:
            return PhaseInfo(Phase.PRETRAIN, -1)
        forward_epoch, position = divmod(epoch - self.pretrain, self.cycle)
        if not self.train_feedback or position == self.sleep_before:
            return PhaseInfo(Phase.WAKE, forward_epoch)
        return PhaseInfo(Phase.SLEEP, forward_epoch)

    def describe(self, epoch: int, forward_epochs: int | None = None, pretrain_open: bool = False) -> str:
        """Lightning epoch ``epoch`` in words, e.g. ``pre-training 3/10``, ``sleep (before wake
        1/100)``, ``wake 1/100``, ``sleep (after wake 1/100, 2/2)``; ``forward_epochs``: the run's
        number of wake epochs (``None``: unknown); ``pretrain_open``: the pre-training may end
        before ``pretrain_epochs`` (``pre-training 3/≤10``)."""
        info = self(epoch)
        if info.phase is Phase.PRETRAIN:
            return f"pre-training {epoch + 1}/{'≤' if pretrain_open else ''}{self.pretrain}"
        total = "" if forward_epochs is None else f"/{forward_epochs}"
        wake = f"wake {info.forward_epoch + 1}{total}"
        if info.phase is Phase.WAKE:
            return wake
        position = (epoch - self.pretrain) % self.cycle
        if position < self.sleep_before:
            extra = f", {position + 1}/{self.sleep_before}" if self.sleep_before > 1 else ""
            return f"sleep (before {wake}{extra})"
        after = position - self.sleep_before
        extra = f", {after}/{self.sleep_after}" if self.sleep_after > 1 else ""
        return f"sleep (after {wake}{extra})"
