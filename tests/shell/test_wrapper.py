"""The zero-code door: an unmodified LightningModule (examples/wrap_existing_model.py's
LitClassifier) trained with DFC from a YAML config alone (lightning_dfc.DFCWrapper), in one
process and in two (DDP, spawned: the wrapped module pickles)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from helpers import write_fake_mnist
from lightning_dfc import DFCMixin, DFCWrapper, SimulationConfig
from lightning_dfc.shell.cli import build_cli

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "extra" / "mnist_wrapped_classifier.yaml"
QUICK = ["--model.init_args.dynamics.steps=30", "--model.init_args.feedback.simulation.steps=10",
         "--model.init_args.module.init_args.hidden=12", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"]

pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")


def _args(tmp_path: Path) -> list[str]:
    write_fake_mnist(tmp_path / "data", 64, 32)
    return ["--config", str(CONFIG), f"--data.data_dir={tmp_path / 'data'}", "--data.download=false",
            "--data.val_size=16", "--data.batch_size=16", *QUICK,
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"]


@pytest.fixture
def lit_classifier(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # the config's class_path: examples.wrap_existing_model
    from examples.wrap_existing_model import LitClassifier

    return LitClassifier


def test_an_unmodified_module_trains_from_the_config_alone(tmp_path, monkeypatch, lit_classifier):
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    cli = build_cli(_args(tmp_path), run=False)
    model = cli.model
    assert isinstance(model, lit_classifier) and isinstance(model, DFCMixin)
    assert type(model).__name__ == "DFCLitClassifier" and model.dfc_variant == "dfc"
    assert model.hparams.hidden == 12  # the host's own hyperparameters
    before = copy.deepcopy(model.model.state_dict())
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert cli.trainer.current_epoch == 1 + 4  # 1 pre-training epoch, then sleep, wake, sleep, sleep
    assert "my_val_accuracy" in cli.trainer.callback_metrics  # the host's validation step and metric
    assert "dfc/steps" in cli.trainer.callback_metrics
    assert all(not torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.name == "wake_epoch=1.ckpt"
    # the checkpoint loads into the plain host class (its own hyperparameters; the feedback
    # weights are extra), which then works exactly as before
    plain = lit_classifier.load_from_checkpoint(best, strict=False).double()
    assert type(plain) is lit_classifier and plain.hparams.hidden == 12
    state = torch.load(best, weights_only=False)["state_dict"]
    assert {k for k in state if not k.startswith("dfc_feedback_weights.")} == set(plain.state_dict())
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(plain(x), model(x))


def test_the_console_script_finds_the_module_in_the_current_directory(tmp_path):
    script = Path(sys.executable).with_name("lightning-dfc")
    if not script.is_file():
        pytest.skip("the lightning-dfc console script is not installed beside this Python")
    args = _args(tmp_path)
    done = subprocess.run([str(script), "fit", *args, "--trainer.max_epochs=1"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lightning-dfc: fit finished." in done.stderr + done.stdout


def test_two_processes_ddp_spawn(tmp_path, monkeypatch, lit_classifier):
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    cli = build_cli([*_args(tmp_path), "--trainer.devices=2", "--trainer.strategy=ddp_spawn",
                     "--trainer.accelerator=cpu"], run=False)
    before = copy.deepcopy(cli.model.model.state_dict())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # spawn pickles the module to each process
    assert cli.trainer.state.finished and "my_val_accuracy" in cli.trainer.callback_metrics
    after = cli.model.model.state_dict()  # rank 0's weights, sent back to this process
    assert all(not torch.equal(before[k], v) for k, v in after.items())


def test_help_lists_the_arguments_with_their_docs(capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--model.help", "lightning_dfc.DFCWrapper"])
    out = capsys.readouterr().out
    for arg, doc in (("--model.network", "the attribute of ``module`` that holds the network"),
                     ("--model.allow_untrained", "leave trainable parameters outside"),
                     ("--model.dynamics", "SimulationConfig")):
        assert arg in out and doc in " ".join(out.split()), (arg, out)


def test_the_wrapped_module_pickles_and_copies(lit_classifier):
    model = DFCWrapper(lit_classifier(hidden=6), network="model", dynamics=SimulationConfig(steps=10))
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(copied) is type(model)
        for a, b in zip(model.parameters(), copied.parameters(), strict=True):
            assert torch.equal(a, b)
        assert copied.dfc_net.sizes == model.dfc_net.sizes


def test_what_the_wrapper_refuses(lit_classifier):
    with pytest.raises(TypeError, match="needs a LightningModule instance"):
        DFCWrapper(nn.Linear(2, 2))
    wrapped = DFCWrapper(lit_classifier(hidden=6), network="model")
    with pytest.raises(TypeError, match="trains with DFC already"):
        DFCWrapper(wrapped, network="model")
    with pytest.raises(ValueError, match="no attribute 'body'.*DFCWrapper: network"):
        DFCWrapper(lit_classifier(hidden=6), network="body")

    class TwoParts(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
            self.decoder = nn.Linear(2, 4)

    with pytest.raises(ValueError, match="decoder.weight.*allow_untrained: true"):
        DFCWrapper(TwoParts(), network="encoder", loss="mse")
    with pytest.warns(UserWarning, match="stay untrained"):
        DFCWrapper(TwoParts(), network="encoder", loss="mse", allow_untrained=True)
