"""What a fit says and writes, in wake epochs (trainer.max_epochs counts them): Lightning's stop
message, the checkpoints' names, validation after wake epochs only, and the summary's plurals.
Each is read where the user meets it: the console (captured) and the checkpoint folder."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from helpers import write_fake_mnist
from lightning_dfc.core.schedule import Phase, PhaseSchedule
from lightning_dfc.shell.cli import build_cli
from lightning_dfc.shell.epochs import STOP_LOGGER, WakeEpochStopMessage, plural, restore_val_limit, users_val_limit
from test_cli import CONFIG, data_args

pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")

# 1 pre-training epoch, then per wake epoch: 1 sleep before, the wake epoch, 1 sleep after
RUN = [
    "--model.init_args.dynamics.steps=20",
    "--model.init_args.feedback.simulation.steps=10",
    "--model.init_args.feedback.pretrain_epochs=1",
    "--model.init_args.feedback.sleep_before=1",
    "--model.init_args.feedback.sleep_after=1",
    "--model.init_args.updates.exclude_non_converged=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.max_epochs=2",
]


class PhasesValidated(Callback):
    """The phase of every epoch whose validation pass ran."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.val_acc: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.phases.append(pl_module.dfc_phase.phase.value)
            self.val_acc.append(float(trainer.callback_metrics["val_acc"]))


def fit(tmp_path: Path, monkeypatch, caplog, *extra: str):
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = build_cli(["--config", CONFIG, *data_args(tmp_path / "data"), *RUN, *extra,
                         f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"], run=False)
        validated = PhasesValidated()
        cli.trainer.callbacks.append(validated)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, validated, [r.getMessage() for r in caplog.records]


def test_a_fit_speaks_in_wake_epochs(tmp_path, monkeypatch, caplog):
    cli, validated, lines = fit(tmp_path, monkeypatch, caplog)
    # 1 pre-training + 2 x (sleep, wake, sleep) = 7 Lightning epochs
    assert cli.trainer.current_epoch == 7
    assert ("`Trainer.fit` stopped: 2 wake epochs reached (max_epochs=2; Lightning counted 7 epochs: "
            "1 pre-training epoch, 4 sleep epochs, 2 wake epochs).") in lines, lines
    assert not any("max_epochs=7" in line for line in lines)
    # validation after the wake epochs only
    assert validated.phases == ["wake", "wake"]
    assert cli.trainer.limit_val_batches == 1.0  # the user's setting is back after the fit
    # the checkpoints kept for val_acc are named by wake epoch; the best one's name says the wake
    # epoch it came from, and its contents are that epoch's
    folder = Path(cli.trainer.checkpoint_callback.dirpath)
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    assert "last.ckpt" in names and all(re.fullmatch(r"wake_epoch=[12]\.ckpt|last\.ckpt", n) for n in names), names
    best = Path(cli.trainer.checkpoint_callback.best_model_path).name
    wake = int(re.fullmatch(r"wake_epoch=(\d)\.ckpt", best).group(1))
    assert wake == 1 + max(range(2), key=lambda k: validated.val_acc[k])
    assert cli.model.dfc_schedule(torch.load(folder / best, weights_only=False)["epoch"]).forward_epoch == wake - 1
    summary = "\n".join(lines[lines.index("lightning-dfc: fit finished."):])
    # plurals: one pre-training epoch, four sleep epochs, two wake epochs
    assert re.search(r"wall time: pretrain \d+\.\d s \(1 epoch\), sleep \d+\.\d s \(4 epochs\), "
                     r"wake \d+\.\d s \(2 epochs\)", summary), summary
    assert "feedback pre-training: 1 epoch," in summary and "(1 epochs)" not in summary
    assert not [line for line in lines if re.search(r"\b1 epochs\b", line)]  # anywhere on the console
    assert f"(wake epoch {wake}), " in summary and best in summary
    # the filter is gone after the fit: Lightning's own message passes unchanged
    assert not logging.getLogger(STOP_LOGGER).filters


def test_validation_after_every_epoch_when_asked(tmp_path, monkeypatch, caplog):
    _, validated, _ = fit(tmp_path, monkeypatch, caplog, "--model.init_args.feedback.validate=true")
    assert validated.phases == ["pretrain", "sleep", "wake", "sleep", "sleep", "wake", "sleep"]


def test_a_checkpoint_filename_of_the_users_is_kept(tmp_path, monkeypatch, caplog):
    cli, _, _ = fit(tmp_path, monkeypatch, caplog, "--trainer.max_epochs=1",
                    "--trainer.callbacks.init_args.filename=mine-{epoch}")
    names = sorted(p.name for p in Path(cli.trainer.checkpoint_callback.dirpath).glob("*.ckpt"))
    assert names == ["last.ckpt", "mine-epoch=2.ckpt"], names


def test_the_stop_message_counts_the_schedule_it_is_given():
    schedule = PhaseSchedule(pretrain_epochs=3, sleep_before=0, sleep_after=2)
    assert [schedule(e).phase for e in range(6)] == [Phase.PRETRAIN] * 3 + [Phase.WAKE, Phase.SLEEP, Phase.SLEEP]
    record = logging.LogRecord(STOP_LOGGER, logging.INFO, __file__, 1, "`Trainer.fit` stopped: `max_epochs=6` reached.",
                               (), None)
    assert WakeEpochStopMessage(lambda: schedule, 1).filter(record)
    assert record.getMessage() == ("`Trainer.fit` stopped: 1 wake epoch reached (max_epochs=1; Lightning counted 6 "
                                   "epochs: 3 pre-training epochs, 2 sleep epochs, 1 wake epoch).")
    other = logging.LogRecord(STOP_LOGGER, logging.INFO, __file__, 1, "`Trainer.fit` stopped: No training batches.",
                              (), None)
    assert WakeEpochStopMessage(lambda: schedule, 1).filter(other)
    assert other.getMessage() == "`Trainer.fit` stopped: No training batches."
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]


class RaiseInEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("planted failure")


def test_a_fit_that_raised_leaves_no_filter_that_speaks(tmp_path, monkeypatch, caplog):
    # a fit that raises never reaches teardown: its filter stays, but inactive, and the next fit
    # replaces it (the stale one's schedule would miscount the next fit's epochs)
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", CONFIG, *data_args(tmp_path / "data"), *RUN,
                     f"--trainer.logger.init_args.save_dir={tmp_path / 'first'}"], run=False)
    cli.trainer.callbacks.append(RaiseInEpoch(1))
    with pytest.raises(RuntimeError, match="planted failure"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # it raised at the start of epoch 1, with validation still switched off for the pre-training
    # epoch before: the trainer says 0, and the next fit on it finds the user's limit all the same
    assert cli.trainer.limit_val_batches == 0 and users_val_limit(cli.trainer) == 1.0
    restore_val_limit(cli.trainer)
    assert cli.trainer.limit_val_batches == 1.0
    stale = [f for f in logging.getLogger(STOP_LOGGER).filters if isinstance(f, WakeEpochStopMessage)]
    assert len(stale) == 1 and not stale[0].active()
    record = logging.LogRecord(STOP_LOGGER, logging.INFO, __file__, 1, "`Trainer.fit` stopped: `max_epochs=9` reached.",
                               (), None)
    assert stale[0].filter(record) and record.getMessage() == "`Trainer.fit` stopped: `max_epochs=9` reached."
    # the next fit (its own schedule: 1 pre-training epoch) says its own counts, then leaves nothing
    _, _, lines = fit(tmp_path, monkeypatch, caplog)
    assert ("`Trainer.fit` stopped: 2 wake epochs reached (max_epochs=2; Lightning counted 7 epochs: "
            "1 pre-training epoch, 4 sleep epochs, 2 wake epochs).") in lines, lines
    assert not logging.getLogger(STOP_LOGGER).filters


class BatchesRun(Callback):
    """How many training and validation batches ran (sanity check excluded)."""

    def __init__(self) -> None:
        self.train, self.val = 0, 0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.train += 1

    def on_validation_batch_end(self, trainer, pl_module, *args) -> None:
        if not trainer.sanity_checking:
            self.val += 1


@pytest.mark.parametrize("n", [1, 3])
def test_fast_dev_run_n_runs_n_batches_with_their_validation_and_a_summary(n, tmp_path, monkeypatch, caplog):
    """``fast_dev_run=N``: N training batches, each a sleep and a wake step (Lightning's N
    optimizer steps would stop after N / 2 batches), up to N validation batches, and the summary."""
    counted = BatchesRun()
    wakes: list[int] = []
    from lightning_dfc.shell.steps import DFCSteps

    wake_step = DFCSteps._dfc_wake_step
    monkeypatch.setattr(DFCSteps, "_dfc_wake_step", lambda self, x, y: (wakes.append(1), wake_step(self, x, y))[1])
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = build_cli(["--config", CONFIG, *data_args(tmp_path / "data"), *RUN[:-1], f"--trainer.fast_dev_run={n}",
                         "--data.batch_size=8"], run=False)
        cli.trainer.callbacks.append(counted)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lines = [r.getMessage() for r in caplog.records]
    assert (counted.train, len(wakes)) == (n, n)
    assert counted.val == min(n, len(cli.datamodule.val_dataloader())) >= 1
    assert "lightning-dfc: fit finished." in lines
    said = plural(n, "training batch", "training batches")
    assert any(line.startswith(f"  fast_dev_run: {said} (a sleep and a wake step each)") for line in lines), lines
