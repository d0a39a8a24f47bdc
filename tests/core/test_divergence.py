"""Every simulation, wake or sleep, noisy or not, has one divergence test: a diverged batch is
skipped (the weights stay untouched), counted, logged with its error ratio, said once on the
console, and too many skips stop the run with advice that follows the cause."""

from __future__ import annotations

import dataclasses
import logging

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig, UpdateConfig, sleep_defaults
from lightning_dfc.core.divergence import DivergenceCheck, advice, state_ratio
from lightning_dfc.shell.mixin import DivergenceError


def _loader(n=32, features=12, classes=4, batch=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return DataLoader(TensorDataset(x, x[:, :classes].argmax(1)), batch_size=batch)


def _fit(model, tmp_path, epochs=1):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", precision="64-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    return trainer


def _noisy_wake_model(**updates):
    """The issue's case 1: a noisy fixed-feedback wake phase with k_p * dt = 4."""
    torch.manual_seed(0)
    return DFCModule(MLP([12, 16, 4]), variant="dfc_fixed", target_stepsize=0.1,
                     dynamics=SimulationConfig(steps=50, k_p=200, sigma=0.001),
                     updates=UpdateConfig(**updates))


def _diverging_sleep_model(**updates):
    """The issue's case 2: a sleep phase with k_p = 1000, dt = 0.006."""
    torch.manual_seed(0)
    sleep = dataclasses.replace(sleep_defaults(), k_p=1000.0, dt=0.006, tau_v=0.02)
    return DFCModule(MLP([12, 16, 4]), variant="dfc", target_stepsize=0.1,
                     dynamics=SimulationConfig(steps=30),
                     feedback=FeedbackConfig(pretrain_epochs=1, simulation=sleep), updates=UpdateConfig(**updates))


CASES = [  # (model, what must stay untouched, the console word, the advice)
    pytest.param(_noisy_wake_model, "forward", "wake batch", "lower dynamics.k_p", id="noisy-wake"),
    pytest.param(_diverging_sleep_model, "feedback", "sleep batch", "lower feedback.simulation.k_p", id="sleep"),
]


def _weights(model, which):
    params = model.dfc_net.forward_parameters() if which == "forward" else model.dfc_net.trainable_feedback()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("build, which, word, remedy", CASES)
def test_diverging_batches_are_skipped_and_said(build, which, word, remedy, tmp_path, caplog):
    model = build(max_diverged_batches=1000, max_skipped_fraction=1.0)
    before = _weights(model, which)
    with caplog.at_level(logging.WARNING, logger="lightning.pytorch"):
        trainer = _fit(model, tmp_path)
    for a, b in zip(before, _weights(model, which)):
        assert torch.equal(a, b), "a diverged batch reached the weights"
    said = [r.getMessage() for r in caplog.records if "skipped, nothing applied" in r.getMessage()]
    assert said and word in said[0], caplog.text
    prefix = "dfc" if which == "forward" else "sleep"
    assert trainer.callback_metrics[f"{prefix}/skipped_batches"] >= 1
    assert trainer.callback_metrics[f"{prefix}/diverged"] == trainer.callback_metrics[f"{prefix}/skipped_batches"]


@pytest.mark.parametrize("build, which, word, remedy", CASES)
def test_too_many_skipped_batches_stop_with_advice_that_follows_the_cause(build, which, word, remedy, tmp_path):
    model = build(max_diverged_batches=1000)
    before = _weights(model, which)
    with pytest.raises(DivergenceError, match="max_skipped_fraction") as info:
        _fit(model, tmp_path)
    assert remedy in str(info.value)
    for a, b in zip(before, _weights(model, which)):
        assert torch.equal(a, b)


def test_the_check_names_the_first_cause():
    check = DivergenceCheck()
    finite = {"finite": 1.0, "state_ratio": 0.1, "error_ratio": 0.5}
    assert check.cause(finite, noisy=False) is None
    assert check.cause({**finite, "finite": 0.0}, noisy=False) == "non_finite"
    assert check.cause(finite, False, [torch.tensor([float("inf")])]) == "non_finite"
    assert check.cause({**finite, "state_ratio": 1e5}, noisy=True) == "state_norm"
    assert check.cause({**finite, "error_ratio": 2.0}, noisy=False) == "error_growth"
    assert check.cause({**finite, "error_ratio": 54.0}, noisy=True) is None  # noise-dominated final error
    assert check.cause({**finite, "error_ratio": float("inf")}, noisy=True) == "error_growth"
    assert check.cause({**finite, "error_ratio": 7e62, "state_ratio": 1e61}, noisy=True) == "state_norm"
    assert check.cause(finite, False, [torch.full((2,), 1e9)], [torch.ones(2)]) == "update_norm"


def test_state_ratio_and_advice():
    v, dv = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    assert state_ratio(v, dv) == 0.0
    dv = [torch.tensor([[0.0, 0.0, 0.0], [300.0, 0.0, 0.0]])]
    assert state_ratio([a + d for a, d in zip(v, dv)], dv) == pytest.approx(300.0 / (3**0.5 + 1))
    unstable = SimulationConfig(k_p=200.0)
    assert "lower dynamics.k_p (now 200) or dynamics.dt (now 0.02)" in advice("error_growth", unstable, "dynamics")
    leaky = SimulationConfig(alpha=1e-5)
    assert "raise it" in advice("error_growth", leaky, "dynamics")
    assert "pre-train the feedback weights longer" in advice("non_finite", SimulationConfig(), "dynamics")


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="max_skipped_fraction must lie in"):
        UpdateConfig(max_skipped_fraction=0.0)
