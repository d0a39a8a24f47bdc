"""The smaller failure cases of issue 13, one row each: every one names its real cause."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers import _write_idx, fake_images, write_fake_mnist
from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig, UpdateConfig
from lightning_dfc.shell.data import MNISTDataModule
from lightning_dfc.shell.distributed import check_precision


def _model():
    torch.manual_seed(0)
    return DFCModule(MLP([8, 10, 3]), variant="dfc_fixed", target_stepsize=0.1, dynamics=SimulationConfig(steps=20))


def _loader(x, y, batch=4):
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _good():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 8, generator=g)
    return x, x[:, :3].argmax(1)


def _fit(model, train, val=None, tmp_path=None, **trainer):
    t = pl.Trainer(max_epochs=1, accelerator="cpu", precision="64-true", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=tmp_path, **trainer)
    t.fit(model, train, val)
    return t


def _nan_inputs():
    x, y = _good()
    x[2, 1] = float("nan")
    return x, y


def _bad_labels():
    x, y = _good()
    y[1] = 7
    return x, y


class _EmptyFirst(DataLoader):
    """A custom loader whose first batch is empty."""

    def __iter__(self):
        x, y = _good()
        yield x[:0], y[:0]
        yield x, y


TRAINING_ROWS = [  # (train loader, val loader, the message)
    pytest.param(lambda: _EmptyFirst(TensorDataset(*_good())), None, r"batch 0 is empty \(B = 0\)", id="empty-batch"),
    pytest.param(lambda: _loader(*_good()), lambda: _loader(*_nan_inputs()),
                 "validation data: batch 0: the inputs contain NaN", id="nan-validation"),
    pytest.param(lambda: _loader(*_good()), lambda: _loader(*_bad_labels()),
                 r"validation data: batch 0: labels must lie in \[0, 3\)", id="label-out-of-range-validation"),
]


@pytest.mark.parametrize("train, val, message", TRAINING_ROWS)
def test_bad_batches_name_their_cause(train, val, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _fit(_model(), train(), None if val is None else val(), tmp_path)


@pytest.mark.parametrize("option, message", [
    (dict(gradient_clip_val=1.0), "set updates.clip_norm"),
    (dict(accumulate_grad_batches=2), "use a larger data.batch_size"),
], ids=["gradient_clip_val", "accumulate_grad_batches"])
def test_trainer_options_dfc_replaces_point_to_the_dfc_setting(option, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _fit(_model(), _loader(*_good()), None, tmp_path, **option)


def _truncated_images(raw):
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])


def _short_labels(raw):
    images, labels = fake_images(40)
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:30])


@pytest.mark.parametrize("damage, message", [
    (_truncated_images, r"cannot read train-images-idx3-ubyte and train-labels-idx1-ubyte in .*MNIST/raw.* truncated"),
    (_short_labels, "do not match: 40 images but 30 labels"),
], ids=["truncated-idx", "labels-shorter-than-images"])
def test_damaged_data_files_are_named(damage, message, tmp_path):
    raw = write_fake_mnist(tmp_path, n_train=40, n_test=10)
    damage(raw)
    data = MNISTDataModule(str(tmp_path), val_size=5, batch_size=8)
    with pytest.raises(ValueError, match=message):
        data.setup("fit")


def test_precisions_say_what_they_do():
    with pytest.warns(UserWarning, match="bfloat16"):
        check_precision("bf16-true")
    with pytest.raises(ValueError, match="keeps the small activation differences exact in float32") as info:
        check_precision("16-mixed")
    assert "loses" not in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_precision("32-true")


@pytest.mark.parametrize("build, message", [
    (lambda: DFCModule(MLP([4, 3]), target_stepsize=math.inf), "target_stepsize .* finite positive"),
    (lambda: SimulationConfig(tau_apical=math.inf), "tau_apical must be a finite positive number"),
    (lambda: SimulationConfig(sigma_output=math.nan), "sigma_output must be a finite number"),
    (lambda: FeedbackConfig(weight_decay=math.nan), "weight_decay must be a finite number"),
    (lambda: UpdateConfig(max_diverged_batches=2.5), "max_diverged_batches must be an integer"),
    (lambda: UpdateConfig(convergence_epsilon=math.nan), "convergence_epsilon must be a finite positive number"),
], ids=["target_stepsize-inf", "tau_apical-inf", "sigma_output-nan", "weight_decay-nan", "max_diverged-float",
        "epsilon-nan"])
def test_python_api_refuses_what_the_cli_refuses(build, message):
    with pytest.raises(ValueError, match=message):
        build()
