"""Strong-DFC: label targets, low-pass filtered noise, single-phase learning, the control loss H.

* The simulation against a literal, trajectory-storing implementation of the authors' equations
  (filtered noise, softmax error, high-pass filtered control in the feedback rule).
* Theory: zero loss means no control and no update; following the Strong-DFC update lowers the
  amount of control H; single-phase feedback learning aligns Q with J^T (Condition 2).
* The module: both modes train from their configs, log H, and reject bad settings.
* The DFC-with-noise example is the DFC example plus the single-phase run's wake noise (the
  published values of all examples: test_published_configs.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import last_wake_spy

from lightning_dfc import MLP, DFCModule
from lightning_dfc.core.config import SimulationConfig
from lightning_dfc.core.diagnostics import condition_2
from lightning_dfc.core.dynamics import feedforward, output_jacobian
from lightning_dfc.core.network import DFCNetwork
from lightning_dfc.core.rules import FeedbackRule
from lightning_dfc.core.control_loss import control_loss
from lightning_dfc.core.methods import forward_update
from lightning_dfc.core.losses import strong_target


pytestmark = pytest.mark.usefixtures("one_thread", "exact_numerics")  # the functional core: exact numerics
REPO = Path(__file__).resolve().parents[2]
DT = torch.float64


def make_net(sizes=(6, 8, 7, 4), activation="tanh", seed=0, feedback_init="xavier_normal"):
    torch.manual_seed(seed)
    return DFCNetwork(MLP(list(sizes), activation=activation), feedback_init=feedback_init).to(DT)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


# ------------------------------------------------------------------ the simulation, literally


def brute_force_strong(W, b, Q, x, target, cfg, highpass_tau, noise):
    """The authors' controller loop (dfc_network.py `controller`, single-phase class), storing
    every time point: softmax error, proactive PI control with the leak on u, instantaneous
    apical compartment v_fb = Q u + sigma n with n low-pass filtered noise, then the continuous
    forward rule and the single-phase feedback rule with u high-pass filtered.

    ``noise``: (T - 1, B, S) standard normal draws, one (B, S) block per Euler step.
    """
    L, T, dt = len(W), cfg.steps, cfg.dt
    phi = [torch.tanh] * (L - 1) + [lambda a: a]
    widths = [w.shape[0] for w in W]
    sigmas = [cfg.sigma] * (L - 1) + [cfg.output_sigma]
    v, vff, r, vfb = [[None] * L for _ in range(T)], [[None] * L for _ in range(T)], [[None] * L for _ in range(T)], []
    pre = x
    for i in range(L):
        vff[0][i] = pre @ W[i].T + b[i]
        v[0][i] = vff[0][i]
        r[0][i] = phi[i](v[0][i])
        pre = r[0][i]
    vfb.append([torch.zeros_like(v[0][i]) for i in range(L)])
    u = [torch.zeros_like(target)]
    u_int = torch.zeros_like(target)
    filtered = [torch.zeros_like(v[0][i]) for i in range(L)]
    alpha_n = dt / cfg.tau_noise
    for t in range(T - 1):
        e = target - torch.softmax(r[t][L - 1], dim=1)
        u_int = u_int + dt * (e - cfg.alpha * u[t])
        u.append(u_int + cfg.k_p * e)
        xi = torch.split(noise[t], widths, dim=1)
        step_fb = []
        pre = x
        for i in range(L):
            vff[t + 1][i] = pre @ W[i].T + b[i]
            filtered[i] = alpha_n / math.sqrt(dt) * xi[i] + (1 - alpha_n) * filtered[i]
            step_fb.append(u[t + 1] @ Q[i].T + sigmas[i] * filtered[i])
            v[t + 1][i] = v[t][i] + dt / cfg.tau_v * (step_fb[i] + vff[t + 1][i] - v[t][i])
            r[t + 1][i] = phi[i](v[t + 1][i])
            pre = r[t + 1][i]
        vfb.append(step_fb)
    B = x.shape[0]
    dW, db = [], []
    for i in range(L):
        gw, gb = torch.zeros_like(W[i]), torch.zeros_like(b[i])
        for t in range(T):
            s = phi[i](v[t][i]) - phi[i](vff[t][i])
            gw += s.T @ (x if i == 0 else r[t][i - 1])
            gb += s.sum(0)
        dW.append(-2.0 / (B * T) * gw)
        db.append(-2.0 / (B * T) * gb)
    # high-pass filtered control: u[1..T-1] minus its EMA started at u[1]
    alpha_u = dt / highpass_tau
    lowpass = u[1]
    hp = [torch.zeros_like(u[1])]
    for t in range(2, T):
        lowpass = alpha_u * u[t] + (1 - alpha_u) * lowpass
        hp.append(u[t] - lowpass)
    dQ = []
    for i in range(L):
        scale = 1.0 / max(sigmas[i], 0.01) ** 2 * (1 + cfg.tau_v / cfg.tau_noise) ** (L - i - 1)
        acc = sum(vfb[t][i].T @ hp[t] for t in range(T - 1))  # pairs (v_fb[t], u_hp[t+1])
        dQ.append(scale / ((T - 1) * B) * acc)
    return dW, db, dQ, u


def test_single_phase_update_matches_the_literal_simulation():
    net = make_net()
    params = net.params()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, dtype=DT, generator=g)
    y = torch.randint(0, 4, (5,), generator=g)
    cfg = SimulationConfig(dt=0.01, steps=60, k_p=1.5, alpha=0.01, tau_v=0.05, sigma=0.02, sigma_output=0.05,
                           tau_noise=0.07)
    rule = FeedbackRule(weight_decay=0.0, sigma_floor=0.01, highpass_tau=0.3, layer_scaling=True)
    got = forward_update("dfc", params, x, y, "cross_entropy", 0.1, cfg, generator=torch.Generator().manual_seed(7),
                         strong_class_value=0.9, feedback_rule=rule)
    gen = torch.Generator().manual_seed(7)  # the same draws as the library: one (B, S) block per step
    noise = torch.stack([torch.randn(5, sum(net.sizes[1:]), dtype=DT, generator=gen) for _ in range(cfg.steps - 1)])
    target, _ = strong_target(feedforward(params, x).r[-1], y, "cross_entropy", 0.9)
    dW, db, dQ, u = brute_force_strong(params.weights, params.biases, params.feedback, x, target, cfg, 0.3, noise)
    torch.testing.assert_close(flat(got.weights), flat(dW), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(flat(got.biases), flat(db), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(flat(got.feedback), flat(dQ), rtol=1e-9, atol=1e-13)
    # the logged H uses the mean control over the last quarter of the steps
    tail = torch.stack(u[cfg.steps - (cfg.steps - 1) // 4:]).mean(0)
    assert got.stats["control_loss"] == pytest.approx(float(control_loss(params, tail, reduction="mean")), rel=1e-9)


def test_strong_target_soft_labels():
    out = torch.zeros(3, 4, dtype=DT)
    target, mode = strong_target(out, torch.tensor([0, 3, 1]), "cross_entropy", 0.97)
    assert mode == "softmax"
    assert torch.allclose(target.sum(1), torch.ones(3, dtype=DT))
    assert target[1, 3] == 0.97 and target[1, 0] == pytest.approx(0.01)
    y = torch.randn(3, 4, dtype=DT)
    assert strong_target(out, y, "mse", 0.99)[1] == "linear"
    with pytest.raises(ValueError, match="target_class_value"):
        strong_target(out, torch.tensor([0, 1, 2]), "cross_entropy", 1.0)


# ------------------------------------------------------------------ theory


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_zero_loss_means_no_control_and_no_update(variant, loss):
    """Output already at the label: the controller never acts, H = 0, every update is 0."""
    net = make_net()
    x = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the output layer emits a fixed vector: W_L = 0, b_L = logits
        net.layers[-1].weight.zero_()
        if loss == "cross_entropy":
            soft = torch.full((4,), 0.03 / 3, dtype=DT)
            soft[2] = 0.97
            net.layers[-1].bias.copy_(torch.log(soft))
            y = torch.full((4,), 2)
        else:
            net.layers[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=DT))
            y = net.layers[-1].bias.detach().expand(4, 4).clone()
    cfg = SimulationConfig(dt=0.01, steps=200, k_p=1.5, alpha=0.01, tau_v=0.05)
    up = forward_update(variant, net.params(), x, y, loss, 0.1, cfg, strong_class_value=0.97)
    assert up.stats["control_loss"] < 1e-26
    assert float(up.control.abs().max()) < 1e-13
    assert float(flat(up.tensors()).abs().max()) < 1e-13


def test_following_the_strong_update_lowers_the_control_loss():
    """H = ||Qbar u_ss||^2 is what Strong-DFC minimises: plain steps along its update shrink it."""
    net = make_net(sizes=(6, 10, 10, 4), seed=1, feedback_init="weight_product")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 6, dtype=DT, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    cfg = SimulationConfig(dt=0.01, steps=400, k_p=1.5, alpha=0.01, tau_v=0.05)
    history = []
    for _ in range(25):
        up = forward_update("dfc_ss", net.params(), x, y, "cross_entropy", 0.1, cfg, strong_class_value=0.9)
        history.append(up.stats["control_loss"])
        with torch.no_grad():
            for p, d in zip(net.forward_parameters(), up.tensors()):
                p -= 0.05 * d
    assert history[-1] < 0.5 * history[0]
    assert sum(b < a for a, b in zip(history, history[1:])) >= 0.8 * (len(history) - 1)


def test_single_phase_feedback_learning_improves_condition_2_on_a_linear_network():
    """Only Q learns, from the same noisy simulations that would train W: col(Q) moves into row(J),
    Condition 2 rises from its random-initialisation value (0.50 here) and stays up."""
    net = make_net(sizes=(5, 8, 8, 3), activation="linear", seed=4)
    g = torch.Generator().manual_seed(5)
    cfg = SimulationConfig(dt=0.01, steps=150, k_p=1.5, alpha=0.05, tau_v=0.05, sigma=0.05, sigma_output=0.05,
                           tau_noise=0.05)
    rule = FeedbackRule(weight_decay=0.0, highpass_tau=0.2, layer_scaling=False)
    params = net.params()
    jac = output_jacobian(params, feedforward(params, torch.zeros(1, 5, dtype=DT)).v)  # constant: linear
    history = [float(condition_2(jac, torch.cat(params.feedback)).mean())]
    opt = torch.optim.SGD(net.trainable_feedback(), lr=0.1)
    for _ in range(60):
        x = torch.randn(32, 5, dtype=DT, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
        up = forward_update("dfc", net.params(), x, y, "cross_entropy", 0.1, cfg, generator=g,
                            strong_class_value=0.9, feedback_rule=rule)
        opt.zero_grad()
        for q, d in zip(net.trainable_feedback(), up.feedback):
            q.grad = d
        torch.nn.utils.clip_grad_norm_(net.trainable_feedback(), 1.0)
        opt.step()
        history.append(float(condition_2(jac, torch.cat(net.params().feedback)).mean()))
    assert history[0] < 0.51
    assert min(history[20:]) > history[0] + 0.04, history


# ------------------------------------------------------------------ the module


def strong_module(variant: str, **overrides) -> DFCModule:
    noisy = variant == "strong_dfc"
    dynamics = dict(dt=0.01, steps=40, k_p=1.5, alpha=0.01, tau_v=0.05)
    if noisy:
        dynamics.update(sigma=0.01, sigma_output=0.02, tau_noise=0.05)
    kwargs = dict(
        network=MLP([6, 8, 4], activation="tanh"),
        variant=variant,
        loss="cross_entropy",
        dynamics=dynamics,
        feedback=dict(
            pretrain_epochs=1, sleep_before=0 if noisy else 1, sleep_after=0, weight_decay=0.1,
            highpass_tau=0.5 if noisy else None, layer_scaling=noisy,
            simulation=dict(dt=0.01, steps=20, k_p=0.5, alpha=0.1, tau_v=0.05, sigma=0.01, tau_noise=0.05),
        ),
        forward_optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        feedback_optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 1e-4}},
        pretrain_optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 1e-4}},
    )
    kwargs.update(overrides)
    return DFCModule(**kwargs).double()


@pytest.mark.parametrize("variant", ["strong_dfc", "strong_dfc_ss"])
def test_strong_variants_train_and_log_the_control_loss(variant, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, dtype=DT, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = strong_module(variant)
    assert not model.dfc_normalize_lr  # no target stepsize to normalise by
    q0 = [q.detach().clone() for q in model.dfc_feedback_weights]
    w0 = [p.detach().clone() for p in model.dfc_net.forward_parameters()]
    with torch.no_grad():
        loss_before = float(torch.nn.functional.cross_entropy(model.dfc_net(x), y))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    with torch.no_grad():  # the direction: the training loss fell (a flipped update raises it)
        loss_after = float(torch.nn.functional.cross_entropy(model.dfc_net(x), y))
    assert loss_after < loss_before, (loss_before, loss_after)
    assert math.isfinite(float(metrics["dfc/control_loss_epoch"])) and float(metrics["dfc/control_loss_epoch"]) > 0
    assert all(not torch.equal(a, b) for a, b in zip(w0, model.dfc_net.forward_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(q0, model.dfc_feedback_weights))
    if variant == "strong_dfc":  # no sleep epochs: epochs = pretraining + 2 forward epochs
        assert trainer.current_epoch == 3


@pytest.mark.parametrize(
    "variant, overrides, match",
    [
        ("strong_dfc", {"updates": {"normalize_lr": True}}, "normalize_lr"),
        ("strong_dfc", {"dynamics": {"dt": 0.01, "steps": 40}}, "sigma > 0"),
        ("strong_dfc", {"feedback": {"highpass_tau": None, "sleep_before": 0, "sleep_after": 0}}, "highpass_tau"),
        ("strong_dfc", {"feedback": {"highpass_tau": 0.5, "layer_scaling": True}}, "tau_noise"),
    ],
)
def test_bad_strong_settings_are_rejected(variant, overrides, match):
    with pytest.raises(ValueError, match=match):
        strong_module(variant, **overrides)


@pytest.mark.parametrize("variant", ["dfc_ssa", "dfa"])
def test_strong_feedback_needs_a_simulated_controller(variant):
    net = make_net()
    x = torch.randn(3, 6, dtype=DT)
    with pytest.raises(ValueError, match="strong feedback needs a simulated controller"):
        forward_update(variant, net.params(), x, torch.tensor([0, 1, 2]), "cross_entropy", 0.1,
                       SimulationConfig(), strong_class_value=0.99)


# ------------------------------------------------------------------ the example configs
# (their published values are checked against the authors' parsers in test_published_configs.py)


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())


def test_dfc_noise_config_is_the_dfc_config_plus_noise():
    """Our reconstruction: the DFC config with the single-phase Strong-DFC config's wake noise."""
    base, noisy, strong = load("mnist_dfc"), load("mnist_dfc_noise"), load("mnist_strong_dfc")
    noise = ("sigma", "sigma_output", "tau_noise")
    dyn = noisy["model"]["init_args"].pop("dynamics")
    base_dyn = base["model"]["init_args"].pop("dynamics")
    assert {k: v for k, v in dyn.items() if k not in noise} == {k: v for k, v in base_dyn.items() if k not in noise}
    assert base_dyn["sigma"] == 0.0 and "tau_noise" not in base_dyn
    assert {k: dyn[k] for k in noise} == {k: strong["model"]["init_args"]["dynamics"][k] for k in noise}
    assert noisy["model"]["init_args"]["updates"].pop("exclude_non_converged") is False
    assert base["model"]["init_args"]["updates"].pop("exclude_non_converged") is True
    assert noisy["model"] == base["model"] and noisy["data"] == base["data"]


def test_condition_monitor_logs_the_control_loss_angle(tmp_path):
    """``ConditionMonitor(metrics=["h", "condition_2"])`` logs, for the last wake batch of the
    epoch: the angle between the applied update and dH/dW, H and Condition 2 at the controlled
    steady state, and Condition 2 at the feedforward point; each recomputed here on that batch
    (the steady state from the functional core, whose own tests check it against long
    simulations; H, the angle and Condition 2 from their definitions)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_dfc.shell.callbacks import ConditionMonitor
    from lightning_dfc.core.control_loss import control_loss_gradient, controlled_steady_state
    from lightning_dfc.core.diagnostics import jacobian_at

    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 6, dtype=DT, generator=g),
                                      torch.randint(0, 4, (32,), generator=g)), batch_size=16)
    torch.manual_seed(0)
    model = strong_module("strong_dfc_ss", dynamics=dict(dt=0.01, steps=300, k_p=1.5, alpha=0.01, tau_v=0.05))
    spy = last_wake_spy()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[spy, ConditionMonitor(metrics=["h", "condition_2"])])
    trainer.fit(model, loader)
    m = trainer.callback_metrics
    record = spy.record
    params, x, y = record.params, record.x, record.y
    ff = feedforward(params, x)
    target, error = model.dfc_target().output_target(ff.r[-1], y, model.dfc_loss, model.dfc_target_stepsize)
    steady = controlled_steady_state(params, x, target, 0.01, error)
    qbar = torch.cat(params.feedback)
    h = float((steady.u @ qbar.T).pow(2).sum(1).mean())  # H = ||Qbar u_ss||^2, batch mean
    assert float(m["diag/control_loss"]) == pytest.approx(h, rel=1e-6)
    c2_ss = float(condition_2(output_jacobian(params, steady.v), qbar).mean())
    assert float(m["diag/condition_2_ss"]) == pytest.approx(c2_ss, rel=1e-6)
    c2_ff = float(condition_2(jacobian_at(params, x), qbar).mean())
    assert float(m["diag/condition_2"]) == pytest.approx(c2_ff, rel=1e-6)
    grad = control_loss_gradient(params, x, steady, 0.01, error)
    a, b = flat(record.update), flat(grad.tensors())
    angle = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
    assert float(m["diag/angle_h"]) == pytest.approx(angle, abs=1e-3)
    assert angle < 90.0  # the update descends H
