"""Wrapping an existing LightningModule with DFCMixin (examples/wrap_existing_model.py)."""

import importlib.util
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import write_fake_mnist
from lightning.pytorch.loggers import CSVLogger

from lightning_dfc import DFCMixin
from lightning_dfc.core.diagnostics import angle
from lightning_dfc.core.rules import bp_update
from lightning_dfc.shell.data import MNISTDataModule

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wrap_existing_model.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("wrap_existing_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wrapped_model_trains_with_dfc_and_keeps_its_own_hooks(example, tmp_path):
    write_fake_mnist(tmp_path, 48, 16)
    pl.seed_everything(0)
    model = example.build(hidden=12, steps=30)
    before = [p.detach().clone() for p in model.model.parameters()]
    trainer = pl.Trainer(max_epochs=1, precision="64-true", accelerator="cpu", logger=CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False)
    model.dfc_record_steps = True  # keep the last wake step: the batch, the weights before it, the applied update
    trainer.fit(model, MNISTDataModule(str(tmp_path), batch_size=16, val_size=16))
    # the applied update descends the loss: the output layer's W_L and b_L lie within 60 degrees of
    # BP's gradient on the step's batch (17 degrees here; 162 with the update's sign flipped; the
    # hidden layer's, at 90, says nothing after 30 steps and one pre-training epoch)
    step = model.dfc_last_wake
    bp = bp_update(step.params, step.x, step.y, "cross_entropy").tensors()
    for applied, gradient in zip(step.update[-2:], bp[-2:], strict=True):
        assert float(angle([applied], [gradient])) < 60.0
    assert not model.automatic_optimization
    assert trainer.current_epoch == 1 + 4  # pretrain + (sleep, wake, sleep, sleep)
    assert "my_val_accuracy" in trainer.callback_metrics  # the user's own validation step and metric
    assert "dfc/steps" in trainer.callback_metrics and "train_loss" in trainer.callback_metrics
    assert all(not torch.equal(a.double(), b) for a, b in zip(before, model.model.parameters()))
    # afterwards the user's module is used exactly as before
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x), model.model(x))
    plain = example.LitClassifier(hidden=12).double()
    plain.model.load_state_dict(model.model.state_dict())
    torch.testing.assert_close(plain(x), model(x))
    assert model.hparams.hidden == 12


def test_example_script_runs(example, tmp_path, monkeypatch):
    """``main`` trains the user's own network through the example's schedule: 1 pre-training epoch,
    then sleep, wake, sleep, sleep; every forward and feedback weight moves from where the same
    seed puts it, the last wake step descends the loss in the output layer, and the user's
    validation metric is logged."""
    write_fake_mnist(tmp_path, 40, 8)
    build = example.build

    def recording_build(*args, **kwargs):  # keep main's last wake step (batch, weights, applied update)
        model = build(*args, **kwargs)
        model.dfc_record_steps = True
        return model

    monkeypatch.setattr(example, "build", recording_build)
    model = example.main(["--data-dir", str(tmp_path), "--hidden", "8", "--steps", "20", "--val-size", "8"])
    monkeypatch.undo()
    step = model.dfc_last_wake
    bp = bp_update(step.params, step.x, step.y, "cross_entropy").tensors()
    for applied, gradient in zip(step.update[-2:], bp[-2:], strict=True):  # W_L, b_L: 25-26 degrees; flipped 154
        assert float(angle([applied], [gradient])) < 60.0
    assert isinstance(model, DFCMixin) and model.dfc_variant == "dfc"
    pl.seed_everything(42)
    untrained = example.build(8, 20).double()
    pl.seed_everything(42)
    again = example.build(8, 20).double()
    assert all(torch.equal(a, b) for a, b in zip(untrained.parameters(), again.parameters()))  # seeded init
    assert model.trainer.current_epoch == 1 + 4
    phases = [model.dfc_schedule(e).phase.value for e in range(model.trainer.current_epoch)]
    assert phases == ["pretrain", "sleep", "wake", "sleep", "sleep"]
    for (name, after), before in zip(model.named_parameters(), untrained.parameters(), strict=True):
        assert not torch.equal(after, before), f"{name} did not train"
    assert "my_val_accuracy" in model.trainer.callback_metrics


def test_missing_network_attribute_is_a_clear_error(example):
    with pytest.raises(ValueError, match="dfc_network_attribute"):
        example.DFCLitClassifier(hidden=4, dfc_network_attribute="net")


class TwoPartAutoEncoder(pl.LightningModule):
    """Lightning's own ``LitAutoEncoder`` layout: the network in two attributes."""

    def __init__(self, freeze_decoder: bool = False):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 8))
        self.decoder.requires_grad_(not freeze_decoder)


class DFCTwoPart(DFCMixin, TwoPartAutoEncoder):
    pass


def test_parameters_dfc_would_not_train_are_refused_by_name():
    """A host whose trainable parameters are not all in the DFC network is refused, naming them
    and the fix; with ``dfc_allow_untrained`` it is a warning that names them; frozen ones are fine."""
    with pytest.raises(ValueError, match=r"4 other trainable parameter\(s\): decoder\.0\.weight, decoder\.0\.bias, "
                                         r"decoder\.2\.weight, decoder\.2\.bias.*nn\.Sequential"):
        DFCTwoPart(dfc_network_attribute="encoder")
    with pytest.warns(UserWarning, match=r"decoder\.0\.weight.*stay untrained"):
        model = DFCTwoPart(dfc_network_attribute="encoder", dfc_allow_untrained=True)
    assert model.dfc_net.sizes == [8, 4, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a frozen decoder: neither an error nor a warning
        DFCTwoPart(freeze_decoder=True, dfc_network_attribute="encoder")
