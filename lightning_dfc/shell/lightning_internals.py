"""Every access of the package to Lightning's private state, one function each.

Lightning has no public hook for these five needs. Each function reads or calls exactly one
private piece, and ``tests/shell/test_lightning_internals.py`` checks each against the installed
Lightning, so that a Lightning release that moves the piece fails there, loudly and by name,
instead of somewhere in a fit. No other module of the package touches a private attribute of
Lightning's modules, loops, callbacks or progress bars (``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from typing import Any

__all__ = ["attached_trainer", "epochs_processed", "save_last_checkpoint", "set_max_steps", "train_progress_bar"]


def attached_trainer(module: Any) -> Any | None:
    """The trainer ``module`` (a ``LightningModule``) is attached to, or None.

    The public ``module.trainer`` raises when there is none (a module used outside a fit)."""
    return module._trainer


def train_progress_bar(trainer: Any) -> Any | None:
    """The tqdm bar of the training epochs of ``trainer``'s progress bar, or None (no progress
    bar, another kind of bar, or before it is created)."""
    return getattr(getattr(trainer, "progress_bar_callback", None), "_train_progress_bar", None)


def epochs_processed(checkpoint: dict[str, Any]) -> int | None:
    """The Lightning epochs whose batches all ran before ``checkpoint`` was saved (what a resume
    continues after), from the fit loop's saved progress; None for a checkpoint without loop
    state (one saved outside ``fit``, or a weights-only one)."""
    loops = checkpoint.get("loops")
    if not loops:
        return None
    return int(loops["fit_loop"]["epoch_progress"]["current"]["processed"])


def save_last_checkpoint(callback: Any, trainer: Any, hook: str) -> None:
    """Let ``callback`` (a ``ModelCheckpoint``) write its ``last.ckpt`` now, in ``hook``
    (``on_train_epoch_end`` or ``on_validation_end``), if that is the hook in which it saves and
    it has not saved at this step already, with Lightning's own saver (link, versioning and
    ``save_last`` rules)."""
    at_train_epoch_end = callback._should_save_on_train_epoch_end(trainer)
    if (hook == "on_train_epoch_end") == at_train_epoch_end and not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def set_max_steps(trainer: Any, steps: int) -> None:
    """Let ``trainer``'s fit run ``steps`` optimizer steps (``fast_dev_run=N`` sets N, and each of
    our batches there takes two: a sleep and a wake step). ``Trainer.max_steps`` is read-only;
    the training epoch loop holds the limit."""
    trainer.fit_loop.epoch_loop.max_steps = steps
