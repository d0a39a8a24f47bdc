"""The plain-PyTorch API (lightning_dfc.DFC): the same update as DFCModule on the same batch, and a
loop with ordinary torch optimizers that learns (issue 14)."""

from __future__ import annotations

import copy
import runpy
import sys
from pathlib import Path

import pytest
import torch

from lightning_dfc import DFC, MLP, DFCModule, SimulationConfig

DT = torch.float64
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plain_pytorch.py"


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=DT)
    return x, x[:, :3].argmax(1)


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss", "dfc_ssa", "dfa", "bp", "strong_dfc_ss"])
def test_the_same_update_as_dfc_module(variant):
    torch.manual_seed(0)
    dynamics = SimulationConfig(steps=40, alpha=0.05)
    # the raw update, unclipped in both (both doors clip the same: test_the_three_doors_train_alike)
    updates = {"clip_norm": None, **({} if variant.startswith("strong") else {"normalize_lr": True})}
    module = DFCModule(MLP([8, 10, 3]), variant=variant, target_stepsize=0.1, dynamics=dynamics, updates=updates).double()
    model = copy.deepcopy(module.network)
    plain = DFC(model, variant=variant, target_stepsize=0.1, dynamics=dynamics, updates=updates)
    with torch.no_grad():
        for q, ref in zip(plain.net.feedback, module.dfc_net.feedback):
            q.copy_(ref)
    plain.to(DT)
    x, y = _batch()
    ours = plain.update(x, y).tensors()
    theirs = module.dfc_wake_update(x, y).tensors()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loss = plain.backward(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    for p, g in zip(plain.forward_parameters(), theirs):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_a_plain_loop_learns_and_sleep_trains_the_feedback():
    torch.manual_seed(0)
    model = MLP([8, 16, 3]).double()
    dfc = DFC(model, variant="dfc", target_stepsize=0.1, dynamics=SimulationConfig(steps=60, alpha=0.05))
    dfc.to(DT)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    fb_opt = torch.optim.SGD(dfc.feedback_parameters(), lr=0.05)
    x, y = _batch(64, seed=1)
    q_before = [q.detach().clone() for q in dfc.feedback_parameters()]
    stats = dfc.sleep(x)
    fb_opt.step()
    assert stats["skipped"] is None and not all(torch.equal(a, b) for a, b in zip(q_before, dfc.feedback_parameters()))
    first = float(torch.nn.functional.cross_entropy(model(x), y))
    for _ in range(30):
        opt.zero_grad()
        dfc.backward(x, y)
        opt.step()
    assert float(torch.nn.functional.cross_entropy(model(x), y)) < first


def test_a_diverged_batch_writes_nothing(caplog):
    torch.manual_seed(0)
    model = MLP([8, 10, 3]).double()
    dfc = DFC(model, variant="dfc_fixed", target_stepsize=0.1, dynamics=SimulationConfig(steps=50, k_p=200, sigma=0.001))
    dfc.to(DT)
    x, y = _batch()
    dfc.backward(x, y)
    assert dfc.last_stats["skipped"] is not None
    assert all(p.grad is None for p in dfc.forward_parameters())
    assert "batch skipped" in caplog.text


def test_strong_sleep_needs_labels():
    dfc = DFC(MLP([8, 10, 3]).double(), variant="strong_dfc_ss", updates={"normalize_lr": False})
    with pytest.raises(ValueError, match="pass y to sleep"):
        dfc.sleep(torch.randn(4, 8, dtype=DT))


def test_the_example_runs(monkeypatch, capsys, tmp_path):
    """examples/plain_pytorch.py on its random data: its 20 pre-training batches raise Condition 2
    (a sleep rule of the wrong sign lowers it), every wake step lowers its own batch's loss (a
    wake update of the wrong sign raises it), and what it prints is what it computed."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--batches", "3", "--pretrain", "20", "--data-dir", str(tmp_path / "no_mnist")])
    example = runpy.run_path(str(EXAMPLE))
    history = example["main"]()
    before, after = history["condition_2"]
    assert after > before + 0.005, (before, after)
    out = capsys.readouterr().out
    assert f"pre-training: 20 batches, Condition 2 = {after:.3f} (from {before:.3f})" in out
    assert len(history["loss"]) == 3 and f"batch 3: loss {history['loss'][-1]:.4f} -> {history['loss_after'][-1]:.4f}" in out
    assert all(after < before for before, after in zip(history["loss"], history["loss_after"], strict=True))
    assert all(0 < loss < 10 for loss in history["loss"])  # cross-entropy of 10 classes, near log 10 here


def test_condition_2_is_the_module_measure_and_rises_with_pretraining():
    """dfc.condition_2(x) equals DFCModule's measure (the one feedback.pretrain_until compares) and
    the definition ||P Qbar|| / ||Qbar|| with P from an autograd Jacobian; pre-training raises it."""
    torch.manual_seed(0)
    module = DFCModule(MLP([8, 10, 3]), target_stepsize=0.1).double()
    model = copy.deepcopy(module.network)
    plain = DFC(model, target_stepsize=0.1)
    with torch.no_grad():
        for q, ref in zip(plain.net.feedback, module.dfc_net.feedback):
            q.copy_(ref)
    plain.to(DT)
    x, _ = _batch(64)
    value = plain.condition_2(x)
    assert value == module.dfc_feedback_condition_2(x)
    # the definition, from scratch: J = d r_L / d (v_1, v_2) per sample by autograd
    w1, b1, w2, b2 = [p.detach() for p in model.parameters()]
    qbar = torch.cat([q.detach() for q in plain.net.feedback])
    ratios = []
    for xb in x:
        v1 = w1 @ xb + b1

        def output(v):
            return w2 @ torch.tanh(v[:10]) + b2 + v[10:]  # r_L = v_2 = W_2 tanh(v_1) + b_2, v_2 enters linearly

        jac = torch.autograd.functional.jacobian(output, torch.cat([v1, torch.zeros(3, dtype=DT)]))
        proj = jac.T @ torch.linalg.solve(jac @ jac.T, jac)
        ratios.append(torch.linalg.matrix_norm(proj @ qbar) / torch.linalg.matrix_norm(qbar))
    assert value == pytest.approx(float(torch.stack(ratios).mean()), rel=1e-10)
    opt = torch.optim.Adam(plain.feedback_parameters(), lr=5e-3)
    for _ in range(100):
        opt.zero_grad()
        plain.sleep(x, pretraining=True)
        opt.step()
    assert plain.condition_2(x) > value
