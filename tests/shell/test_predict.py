"""``lightning-dfc predict`` writes its outputs through a BasePredictionWriter, and ``plot`` is
listed in ``lightning-dfc --help`` (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from helpers import write_fake_mnist
from lightning_dfc.shell.cli import build_cli, main
from test_cli import CONFIG, SHORT, data_args

WRITER = str(Path(__file__).resolve().parents[2] / "examples" / "extra" / "predict_writer.yaml")


def test_predict_writes_the_predictions(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    fit = build_cli(["fit", "--config", CONFIG, *data_args(tmp_path / "data"), *SHORT, "--trainer.max_epochs=1",
                     f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    build_cli(["predict", "--config", CONFIG, "--config", WRITER, *data_args(tmp_path / "data"), *SHORT,
               f"--ckpt_path={ckpt}"])
    written = torch.load(tmp_path / "predictions" / "predictions.pt")
    fit.datamodule.setup("test")
    x = torch.cat([batch[0] for batch in fit.datamodule.test_dataloader()])
    with torch.no_grad():
        expected = fit.model(x.to(torch.float64))
    assert written["outputs"].shape == (32, 10)
    torch.testing.assert_close(written["outputs"], expected, rtol=0, atol=0)
    assert torch.equal(written["labels"], expected.argmax(1))


def test_help_lists_plot(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "fit" in out and "predict" in out and "plot" in out.split("other subcommands:")[1]
