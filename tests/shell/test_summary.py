"""The end-of-fit summary (issue 14): best checkpoint and score with its wake epoch, wall time per
phase, skipped batches, and the commands to test and plot the run."""

from __future__ import annotations

import logging
import re
import sys

from helpers import write_fake_mnist
from lightning_dfc.shell.cli import build_cli
from test_cli import CONFIG, SHORT, data_args


def test_fit_ends_with_a_summary(tmp_path, monkeypatch, caplog):
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = build_cli(["fit", "--config", CONFIG, *data_args(tmp_path / "data"), *SHORT, "--trainer.max_epochs=2",
                         f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
    lines = [r.getMessage() for r in caplog.records]
    start = lines.index("lightning-dfc: fit finished.")
    summary = "\n".join(lines[start:])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert re.search(rf"best checkpoint: val_acc = \d\.\d{{4}} \(wake epoch [12]\), {re.escape(best)}", summary), summary
    assert re.search(r"wall time: sleep \d+\.\d s \(2 epochs\), wake \d+\.\d s \(2 epochs\)", summary), summary
    assert "skipped batches (diverged): wake 0, sleep 0" in summary
    assert "numerics: fast\n" in summary + "\n"  # the example config's preset, no lever set by hand
    log_dir = cli.trainer.log_dir
    assert f"lightning-dfc test --config {log_dir}/config.yaml --ckpt_path {best}" in summary
    assert f"lightning-dfc plot {log_dir}" in summary


def test_summary_names_the_numerics_and_the_levers_set_by_hand():
    from lightning_dfc import MLP, DFCModule
    from lightning_dfc.shell.summary import numerics_line

    plain = DFCModule(MLP([4, 3, 2]), variant="dfc", numerics="exact")
    assert numerics_line(plain) == "  numerics: exact"
    tuned = DFCModule(MLP([4, 3, 2]), variant="dfc", dynamics={"tolerance": 1e-6, "outer_every": 10},
                      feedback={"simulation": {"dtype": "float64"}})
    # outer_every 10 is the preset's own value: not an override
    assert numerics_line(tuned) == ("  numerics: fast (set by hand: dynamics.tolerance=1e-06, "
                                    "feedback.simulation.dtype=float64)")


def test_summary_says_how_the_sleep_phase_simulates():
    from lightning_dfc import MLP, DFCModule
    from lightning_dfc.shell.summary import sleep_simulation_line

    assert sleep_simulation_line(DFCModule(MLP([20, 12, 4]), variant="dfc")) == (
        "  sleep phase: linearised, reduced to the output's dimensions (linear_sleep, docs/numerics.md)")
    assert sleep_simulation_line(DFCModule(MLP([20, 12, 4]), variant="dfc", numerics="exact")) == (
        "  sleep phase: the whole network simulated (linear_sleep off)")
    assert "wide output" in sleep_simulation_line(DFCModule(MLP([20, 12, 20]), variant="dfc"))
    assert "Strong-DFC" in sleep_simulation_line(DFCModule(MLP([20, 12, 4]), variant="strong_dfc_ss"))
    assert sleep_simulation_line(DFCModule(MLP([20, 12, 4]), variant="dfc_fixed")) is None


def test_a_fit_from_python_says_how_to_test_it_from_python(tmp_path, caplog):
    """No config.yaml is saved by a fit from Python: the summary's test command is the Python
    one, with the best checkpoint, and that command works."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lightning_dfc.shell.data import MNISTDataModule

    write_fake_mnist(tmp_path / "data", 64, 32)
    data = MNISTDataModule(data_dir=str(tmp_path / "data"), batch_size=16, val_size=16, download=False)
    from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig
    from test_module import SLEEP

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, precision="64-true", enable_progress_bar=False,
                         enable_model_summary=False, logger=CSVLogger(tmp_path / "logs"),
                         callbacks=[ModelCheckpoint(monitor="val_acc", mode="max")], default_root_dir=tmp_path)
    m = DFCModule(MLP([784, 10, 10]), variant="dfc", dynamics=SimulationConfig(steps=30),
                  feedback=FeedbackConfig(pretrain_epochs=1, sleep_before=0, sleep_after=0, simulation=SLEEP))
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer.fit(m, datamodule=data)
    summary = "\n".join(r.getMessage() for r in caplog.records)
    best = trainer.checkpoint_callback.best_model_path
    assert f"test it:   trainer.test(model, datamodule=..., ckpt_path={best!r})" in summary, summary
    assert "lightning-dfc test --ckpt_path" not in summary
    assert trainer.test(m, datamodule=data, ckpt_path=best)[0]["test_acc"] >= 0
