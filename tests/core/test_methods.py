"""The method registry: names resolve to method objects, composition is checked, and a new method
is one file plus one registry entry (``tests/readout_method.py``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import METHODS, MLP, DFCModule, Method, register_method, resolve_method
from lightning_dfc.core.methods import DFC, DFCSSA, DFCSteadyState
from lightning_dfc.core.targets import HoldOutput, NudgedTarget, StrongTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import readout_method  # noqa: E402  (registers "readout")


def test_names_resolve_to_method_objects_and_strong_dfc_is_composition():
    assert isinstance(resolve_method("dfc_ss_fixed"), DFCSteadyState)
    assert resolve_method("dfc_ss_fixed").feedback_init == "weight_product"
    assert not resolve_method("dfc_ss_fixed").train_feedback
    strong = resolve_method("strong_dfc")
    assert isinstance(strong, DFC) and isinstance(strong.target, StrongTarget) and strong.single_phase
    two_phase = resolve_method("strong_dfc_ss")
    assert isinstance(two_phase, DFCSteadyState) and two_phase.strong and not two_phase.single_phase
    assert isinstance(resolve_method("dfc").target, NudgedTarget) and not resolve_method("dfc").strong
    assert resolve_method(strong) is strong  # a method object passes through
    assert all(method.name == name for name, method in METHODS.items())


def test_registry_refuses_bad_entries():
    with pytest.raises(ValueError, match="unknown variant 'nope'; choose one of"):
        resolve_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method("dfc", DFC())
    with pytest.raises(TypeError, match="expects a Method instance"):
        register_method("not_a_method", object())
    with pytest.raises(ValueError, match="strong feedback needs a simulated controller"):
        register_method("strong_ssa", DFCSSA(target=StrongTarget()))
    with pytest.raises(ValueError, match="single-phase feedback learning uses the continuous dfc rule"):
        register_method("single_phase_ss", DFCSteadyState(single_phase=True))
    assert "strong_ssa" not in METHODS and "single_phase_ss" not in METHODS


def test_sleep_targets_follow_the_method():
    from lightning_dfc import FeedbackConfig, SimulationConfig, UpdateConfig
    from lightning_dfc.core.config import Settings

    updates, feedback = UpdateConfig(target_class_value=0.9), FeedbackConfig()
    settings = Settings(SimulationConfig(), feedback, updates)
    assert resolve_method("dfc").sleep_target(settings, pretraining=False) == HoldOutput()
    pre = resolve_method("strong_dfc").sleep_target(settings, pretraining=True)
    assert pre == StrongTarget(0.9, linear_error=True)  # the authors' published pre-training
    clean = settings._replace(feedback=dataclasses.replace(feedback, pretrain_mode="clean"))
    assert resolve_method("strong_dfc").sleep_target(clean, pretraining=True) == StrongTarget(0.9)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    return x, (x[:, :3]).argmax(1)


def test_a_new_method_is_one_file_and_one_registry_entry(tmp_path):
    assert isinstance(METHODS["readout"], readout_method.Readout)
    torch.manual_seed(0)
    model = DFCModule(MLP([6, 8, 3]), variant="readout", target_stepsize=0.1).double()
    x, y = _data()

    # its update is backprop's gradient for the output layer and zero elsewhere
    update = model.dfc_wake_update(x[:16], y[:16])
    net = model.dfc_net
    params = net.forward_parameters()
    loss = torch.nn.functional.cross_entropy(model.network(x[:16]), y[:16])
    grads = torch.autograd.grad(loss, params)
    for i, (ours, bp) in enumerate(zip(update.tensors(), grads)):
        expected = bp if i >= len(params) - 2 else torch.zeros_like(bp)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)

    # and it trains through Lightning like any built-in method: no sleep epochs, hidden layer fixed
    hidden_before = net.layers[0].weight.detach().clone()
    output_before = net.layers[-1].weight.detach().clone()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", precision="64-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert trainer.current_epoch == 2  # fixed feedback: wake epochs only
    torch.testing.assert_close(net.layers[0].weight, hidden_before, rtol=0, atol=0)
    assert not torch.equal(net.layers[-1].weight, output_before)


def test_methods_carry_what_they_need():
    assert resolve_method("bp").feedback_init is None and not resolve_method("bp").simulates
    assert not resolve_method("dfa").train_feedback and not resolve_method("dfa").simulates
    assert resolve_method("strong_dfc").default_forward_clip_grouping == "layer"
    assert resolve_method("dfc").default_forward_clip_grouping == "tensor"
    assert resolve_method("dfc").default_normalize_lr and not resolve_method("strong_dfc_ss").default_normalize_lr
    assert issubclass(readout_method.Readout, Method)


def test_target_loss_sum_nudges_each_sample_by_its_own_gradient():
    """``updates.target_loss: sum`` (strong_dfc's nudge, ``tests/reference`` case dfc_noisy_wake):
    lambda times each sample's own loss gradient, the batch size times the mean's nudge, and the
    same per DDP rank whatever the number of ranks (``mean`` divides lambda by it)."""
    from lightning_dfc import UpdateConfig

    output, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    mean, total = NudgedTarget("mean"), NudgedTarget("sum")
    d_mean = mean.control(output, y, "cross_entropy", 0.1).delta
    d_sum = total.control(output, y, "cross_entropy", 0.1).delta
    torch.testing.assert_close(d_sum, 6 * d_mean)
    torch.testing.assert_close(d_sum, -0.1 * (torch.softmax(output, 1) - torch.nn.functional.one_hot(y, 4)))
    assert mean.rank_stepsize(0.1, 2) == 0.05 and total.rank_stepsize(0.1, 2) == 0.1
    target = resolve_method("dfc").wake_target(UpdateConfig(target_loss="sum"))
    assert target == NudgedTarget("sum")
    with pytest.raises(ValueError, match="target_loss must be one of"):
        UpdateConfig(target_loss="batch")
