"""ConditionMonitor: the diagnostics callback, from Python, YAML and under DDP."""

import csv
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import last_wake_spy
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig, UpdateConfig
from lightning_dfc.shell.callbacks import ConditionMonitor
from lightning_dfc.shell.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
SLEEP = SimulationConfig(dt=0.005, steps=10, k_p=0.1, alpha=0.5, tau_v=0.01, tau_apical=0.1,
                         proactive=False, sigma=0.02, early_stop=False)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g) * 2 - 1
    y = torch.tanh(x @ torch.randn(6, 3, generator=g))
    return DataLoader(TensorDataset(x, y), batch_size=16)


def model(variant, clip=1.0):
    torch.manual_seed(0)
    return DFCModule(MLP([6, 8, 8, 3]), variant=variant, loss="mse", target_stepsize=0.01,
                     dynamics=SimulationConfig(steps=100, alpha=0.01, k_p=1.5, dt=0.005),
                     feedback=FeedbackConfig(pretrain_epochs=1, sleep_before=1, sleep_after=0, simulation=SLEEP),
                     updates=UpdateConfig(clip_norm=clip))


def fit(m, tmp_path, monitor, **kw):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, precision="64-true", logger=CSVLogger(tmp_path),
                         callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False, **kw)
    trainer.fit(m, data())
    return trainer


def test_bp_update_has_zero_angle_with_bp_and_known_sanity(tmp_path):
    t = fit(model("bp", clip=None), tmp_path, ConditionMonitor(metrics=["bp", "gn", "mn"], phases=["wake"]))
    m = t.callback_metrics
    assert m["diag/angle_bp"] < 1e-5 and m["diag/angle_bp/layer_1"] < 1e-5
    assert 0 < m["diag/angle_gn"] < 90 and 0 < m["diag/angle_mn"] < 90


def test_ssa_variant_is_aligned_with_ssa_and_all_metrics_are_logged(tmp_path):
    monitor = ConditionMonitor(every_n_steps=2)
    t = fit(model("dfc_ssa", clip=None), tmp_path, monitor, log_every_n_steps=1)
    m = t.callback_metrics
    assert m["diag/angle_ssa"] < 1e-5
    for key in ("diag/condition_1", "diag/condition_2", "diag/condition_3_margin", "diag/condition_3_fraction",
                "diag/stability", "diag/angle_q_jt", "diag/angle_q_pinv", "diag/sleep/condition_2",
                "diag/angle_bp", "diag/angle_gn", "diag/angle_mn"):
        assert key in m and torch.isfinite(m[key]), key
    assert 0 <= m["diag/condition_2"] <= 1 + 1e-9 and 0 <= m["diag/condition_3_fraction"] <= 1
    rows = list(csv.DictReader(open(Path(t.logger.log_dir) / "metrics.csv")))
    wake_epoch_rows = [r for r in rows if r.get("diag/condition_2")]
    assert len(wake_epoch_rows) >= 2 + 1  # every 2nd of 4 wake batches, and at the epoch's end
    assert sum(1 for r in rows if r.get("diag/sleep/condition_2")) >= 2  # pre-training and sleep epochs


def test_monitor_does_not_change_training(tmp_path):
    runs = []
    for monitor in (ConditionMonitor(), ConditionMonitor(metrics=["bp"], at_epoch_end=False)):
        pl.seed_everything(3)
        m = model("dfc")
        fit(m, tmp_path, monitor)
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown metrics"):
        ConditionMonitor(metrics=["condition_4"])
    with pytest.raises(ValueError, match="phases"):
        ConditionMonitor(phases=["dream"])


def test_monitor_from_yaml_config(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    callback = {"class_path": "lightning_dfc.shell.callbacks.ConditionMonitor",
                "init_args": {"metrics": ["condition_2", "mn"], "max_samples": 8}}
    cli = build_cli([
        "--config", str(ROOT / "examples" / "toy_dfc.yaml"),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        f"--trainer.callbacks={[callback]}".replace("'", '"'),
        "--data.num_train=64", "--data.num_val=16", "--data.num_test=16", "--data.teacher_hidden=[16]",
        "--model.init_args.dynamics.steps=20", "--model.init_args.feedback.simulation.steps=10",
        "--model.init_args.feedback.pretrain_epochs=1",
    ], run=False)
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, ConditionMonitor)]
    assert monitor.metrics == ("condition_2", "mn")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "diag/angle_mn" in cli.trainer.callback_metrics
    assert "diag/sleep/condition_2" in cli.trainer.callback_metrics


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform != "linux", reason="ddp_fork needs Linux")
def test_monitor_under_ddp(tmp_path):
    t = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, precision="64-true",
                   logger=False, callbacks=[ConditionMonitor(metrics=["condition_2", "bp", "ssa"])],
                   enable_checkpointing=False, enable_progress_bar=False)
    t.fit(model("dfc_ssa", clip=None), data())
    m = t.callback_metrics
    assert 0 <= m["diag/condition_2"] <= 1 + 1e-9 and m["diag/angle_ssa"] < 1e-5


def test_logged_condition_2_is_the_recomputed_one(tmp_path):
    """The epoch-end ``diag/condition_2`` is Condition 2 on the epoch's last wake batch,
    recomputed here from its definition: J by ``torch.func.jacrev`` of the output with respect
    to a perturbation of every layer's voltage, then ||J^T (J J^T)^{-1} J Qbar||_F / ||Qbar||_F
    per sample, averaged."""
    spy = last_wake_spy()
    m = model("dfc")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, precision="64-true", logger=False,
                         callbacks=[spy, ConditionMonitor(metrics=["condition_2"], max_samples=None)],
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(m, data())
    params, x = spy.record.params, spy.record.x

    def output(x1, deltas):
        r = x1
        for i, (w, b, act) in enumerate(zip(params.weights, params.biases, params.activations)):
            r = act(w @ r + b + deltas[i])
        return r

    deltas = [torch.zeros(w.shape[0], dtype=x.dtype) for w in params.weights]
    jac = torch.func.vmap(lambda x1: torch.cat(torch.func.jacrev(output, argnums=1)(x1, deltas), dim=1))(x)
    qbar = torch.cat(params.feedback)  # (S, n_L)
    projection = jac.transpose(1, 2) @ torch.linalg.solve(jac @ jac.transpose(1, 2), jac)  # (B, S, S)
    c2 = torch.linalg.matrix_norm(projection @ qbar) / torch.linalg.matrix_norm(qbar)
    assert float(trainer.callback_metrics["diag/condition_2"]) == pytest.approx(float(c2.mean()), rel=1e-6)  # logged as float32
    assert 0.05 < float(c2.mean()) < 0.999  # a non-trivial value: random feedback, one pre-training epoch
