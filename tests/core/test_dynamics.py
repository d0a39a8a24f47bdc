"""Mechanics of the simulation and the learning rules (not the theory: see test_theory.py).

The key tests are the brute-force references: a literal per-time-step simulation that stores the
whole trajectory, written from the recursion documented at the top of ``lightning_dfc/dynamics.py``,
against the running-sum implementation of ``simulate`` / ``forward_update`` / ``feedback_update``,
in the published numerics (``exact_numerics``: float64, Gaussian noise; the fast numerics are
checked against these in test_numerics.py).
"""

import copy
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from lightning_dfc import MLP, DFCNetwork, SimulationConfig, sleep_defaults
from lightning_dfc.core.activations import Activation
from lightning_dfc.core.dynamics import feedforward, output_jacobian, simulate
from lightning_dfc.core.network import LayerParams
from lightning_dfc.core.rules import ConvergenceCriterion, dfc_ss_update, dfc_update, feedback_update
from lightning_dfc.core.methods import forward_update
from lightning_dfc.core.losses import loss_gradient, output_target

DT = torch.float64
SIZES = [6, 8, 7, 4]

pytestmark = pytest.mark.usefixtures("exact_numerics")


def make_net(
    sizes=SIZES, activation="tanh", seed=0, feedback_init="weight_product", dtype=DT
) -> DFCNetwork:
    torch.manual_seed(seed)
    return DFCNetwork(MLP(sizes, activation=activation), feedback_init=feedback_init).to(dtype)


def batch(n=5, seed=1, n_in=SIZES[0], n_out=SIZES[-1], dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, dtype=dtype, generator=g), torch.randint(
        0, n_out, (n,), generator=g
    )


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def cosine(a, b) -> float:
    return F.cosine_similarity(flat(a).double(), flat(b).double(), dim=0).item()


def rel_err(got, want) -> float:
    got, want = flat(got), flat(want)
    return ((got - want).norm() / want.norm()).item()


def realistic_cfg(**kw) -> SimulationConfig:
    base = {"dt": 0.02, "steps": 1000, "k_p": 2.0, "tau_v": 0.2, "alpha": 0.01}
    base.update(kw)
    return SimulationConfig(**base)


# =========================================================================== SimulationConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.01}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"dt": 0.3, "tau_v": 0.2}, "tau_v"),
        ({"dt": 0.02, "tau_apical": 0.01}, "tau_apical"),
        ({"tau_v": 0.0}, "tau_v"),
        ({"tau_v": -1.0}, "tau_v"),
        ({"tau_apical": 0.0}, "tau_apical"),
        ({"tau_apical": -0.5}, "tau_apical"),
        ({"steps": 1}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": 10.0}, "steps"),
        ({"steps": "10"}, "steps"),
        ({"alpha": -1e-3}, "alpha"),
        ({"k_p": -1.0}, "k_p"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma_output": -0.1}, "sigma_output"),
        ({"check_every": 0}, "check_every"),
        ({"check_every": 2.5}, "check_every"),
        ({"outer_every": 0}, "outer_every"),
        ({"tolerance": 0.0}, "tolerance"),
    ],
)
def test_simulation_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**kwargs)


def test_simulation_config_accepts_edge_values():
    cfg = SimulationConfig(
        dt=0.2,
        tau_v=0.2,
        tau_apical=0.2,
        steps=2,
        k_p=0.0,
        alpha=0.0,
        sigma=0.0,
        check_every=1,
        outer_every=1,
    )
    assert cfg.apical_rate == 1.0 and not cfg.noisy
    assert SimulationConfig().apical_rate == 1.0
    assert SimulationConfig(dt=0.01, tau_apical=0.04).apical_rate == 0.25
    noisy = SimulationConfig(sigma=0.0, sigma_output=0.1)
    assert noisy.noisy and noisy.output_sigma == 0.1
    assert SimulationConfig(sigma=0.2).output_sigma == 0.2
    assert sleep_defaults().noisy and not sleep_defaults().proactive


# ============================================================ zero error: nothing moves


def test_zero_error_nothing_moves_and_updates_are_exactly_zero():
    net = make_net(feedback_init="xavier_normal")
    p = net.params()
    x, _ = batch()
    ff = feedforward(p, x)
    y = ff.r[-1].clone()  # MSE with y = output: zero loss gradient, target == output exactly
    target = output_target(ff.r[-1], y, "mse", 0.1)
    assert torch.equal(target, ff.r[-1])
    cfg = SimulationConfig(dt=0.02, steps=60, k_p=2.0, tau_v=0.2, alpha=0.01, early_stop=False)
    res = simulate(p, x, ff, target, cfg, accumulate_forward=True)
    assert torch.count_nonzero(res.u) == 0
    for v, v_ff, r, r_ff in zip(res.v, ff.v, res.r, ff.r, strict=True):
        assert torch.equal(v, v_ff)
        assert torch.equal(r, r_ff)
    assert all(torch.count_nonzero(s) == 0 for s in res.signal_sum)
    assert res.steps_simulated == 59 and res.finite
    for variant in ("dfc", "dfc_ss", "dfc_ssa"):
        for es in (False, True):
            up = forward_update(
                variant, p, x, y, "mse", 0.1, dataclasses.replace(cfg, early_stop=es)
            )
            assert all(torch.count_nonzero(t) == 0 for t in up.tensors()), (variant, es)
            assert up.stats["non_converged"] == 0
    # with early stop the settled state is detected at the first check that can compare two
    # predictions of the update (the second)
    up = forward_update(
        "dfc", p, x, y, "mse", 0.1, dataclasses.replace(cfg, early_stop=True, check_every=5)
    )
    assert up.stats["steps"] == 10


# ============================================================ early stop / outer_every


@pytest.fixture(scope="module")
def realistic_problem():
    net = make_net(feedback_init="weight_product")
    x, y = batch(n=5, seed=2)
    p = net.params()
    full = realistic_cfg(early_stop=False, outer_every=1)
    ref = {v: forward_update(v, p, x, y, "cross_entropy", 1e-2, full) for v in ("dfc", "dfc_ss")}
    return p, x, y, ref


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
def test_early_stop_matches_full_simulation(realistic_problem, variant):
    p, x, y, ref = realistic_problem
    assert ref[variant].stats["steps"] == 999
    up = forward_update(variant, p, x, y, "cross_entropy", 1e-2, realistic_cfg(early_stop=True))
    assert up.stats["steps"] < 999
    assert up.stats["steps"] % 20 == 0  # check_every
    assert cosine(up.tensors(), ref[variant].tensors()) >= 0.9999


def test_outer_every_10_matches_every_step(realistic_problem):
    p, x, y, ref = realistic_problem
    up = forward_update(
        "dfc", p, x, y, "cross_entropy", 1e-2, realistic_cfg(early_stop=False, outer_every=10)
    )
    assert up.stats["steps"] == 999
    assert cosine(up.tensors(), ref["dfc"].tensors()) >= 0.999999
    # the first layer and the biases never use the rectangle rule: identical up to rounding
    assert (
        rel_err(
            [up.weights[0], *[b for b in up.biases]], [ref["dfc"].weights[0], *ref["dfc"].biases]
        )
        < 1e-12
    )


def test_record_returns_trajectories():
    net = make_net()
    p = net.params()
    x, y = batch(n=3)
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "cross_entropy", 0.1)
    cfg = SimulationConfig(
        dt=0.02, steps=40, k_p=2.0, tau_v=0.2, alpha=0.01, early_stop=True, check_every=5
    )
    res = simulate(p, x, ff, target, cfg, record=True)
    n = res.steps_simulated + 1
    assert res.steps_simulated == 39  # recording disables the early stop
    assert res.trajectory["u"].shape == (n, 3, 4)
    assert res.trajectory["r_L"].shape == (n, 3, 4)
    assert torch.equal(res.trajectory["u"][-1], res.u)
    assert torch.equal(res.trajectory["r_L"][-1], res.r[-1])
    assert torch.count_nonzero(res.trajectory["u"][0]) == 0
    assert torch.equal(res.trajectory["r_L"][0], ff.r[-1])
    # recording does not change the dynamics
    plain = simulate(p, x, ff, target, dataclasses.replace(cfg, early_stop=False))
    assert torch.equal(plain.u, res.u)
    assert simulate(p, x, ff, target, cfg).trajectory == {}


# =========================================================================== brute-force references


def tanh_net_tensors(seed=3, sizes=(5, 6, 4, 3), feedback="random"):
    """Explicit W, b, Q of a tiny tanh network with linear output, and the matching LayerParams."""
    g = torch.Generator().manual_seed(seed)
    W = [
        torch.randn(n_out, n_in, dtype=DT, generator=g) / math.sqrt(n_in)
        for n_in, n_out in itertools.pairwise(sizes)
    ]
    b = [0.1 * torch.randn(n_out, dtype=DT, generator=g) for n_out in sizes[1:]]
    if feedback == "random":
        Q = [
            torch.randn(n, sizes[-1], dtype=DT, generator=g) / math.sqrt(sizes[-1])
            for n in sizes[1:-1]
        ]
    else:  # W_{i+1}^T ... W_L^T: stable dynamics
        Q = []
        prod = W[-1].T
        for w in reversed(W[1:-1]):
            Q.insert(0, prod)
            prod = w.T @ prod
        Q.insert(0, prod)
    Q.append(torch.eye(sizes[-1], dtype=DT))
    acts = tuple(Activation("tanh") for _ in W[:-1]) + (Activation("linear"),)
    phi = [torch.tanh for _ in W[:-1]] + [lambda v: v]
    return W, b, Q, phi, LayerParams(tuple(W), tuple(b), acts, tuple(Q))


def brute_force_simulation(W, b, Q, phi, x, target, cfg, noise_generator=None):
    """Literal Euler(-Maruyama) simulation storing every time point t = 0..T-1.

    Returns lists over time of: v[t][i], vB[t][i] (the basal voltage used to compute v[t][i]),
    r[t][i], vA[t][i], u[t].
    """
    L, B, T = len(W), x.shape[0], cfg.steps
    dt, k_p, alpha, tau_v = cfg.dt, cfg.k_p, cfg.alpha, cfg.tau_v
    tau_a = dt if cfg.tau_apical is None else cfg.tau_apical
    n_out = W[-1].shape[0]
    widths = [w.shape[0] for w in W]
    sigmas = [cfg.sigma] * (L - 1) + [cfg.output_sigma]

    # t = 0: the feedforward state, no control, no apical voltage
    v0, vB0, r0, pre = [], [], [], x
    for i in range(L):
        vB0.append(pre @ W[i].T + b[i])
        v0.append(vB0[i].clone())
        r0.append(phi[i](v0[i]))
        pre = r0[i]
    v, vB, r = [v0], [vB0], [r0]
    vA = [[torch.zeros(B, n, dtype=x.dtype) for n in widths]]
    u = [torch.zeros(B, n_out, dtype=x.dtype)]
    u_int = torch.zeros(B, n_out, dtype=x.dtype)

    for t in range(T - 1):
        # proactive PI controller, leak on the total control signal
        e = target - r[t][L - 1]
        u_int = u_int + dt * (e - alpha * u[t])
        u.append(u_int + k_p * e)
        # apical compartment: v^A[t+1] = v^A[t] + dt/tau_A (Q u - v^A[t]) (+ noise)
        u_fb = u[t + 1] if cfg.proactive else u[t]
        new_vA = [vA[t][i] + (dt / tau_a) * (u_fb @ Q[i].T - vA[t][i]) for i in range(L)]
        if noise_generator is not None:
            xi = torch.randn((B, sum(widths)), dtype=x.dtype, generator=noise_generator)
            xi_blocks = torch.split(xi, widths, dim=1)
            new_vA = [
                a + sigmas[i] * math.sqrt(dt) / tau_a * xi_blocks[i] for i, a in enumerate(new_vA)
            ]
        vA.append(new_vA)
        # somatic compartments
        new_v, new_vB, new_r = [], [], []
        for i in range(L):
            if i == 0:
                pre = x
            elif cfg.inst_transmission:
                pre = new_r[i - 1]  # layer i-1's rate of this same step, r_{i-1}[t+1]
            else:
                pre = r[t][i - 1]  # the previous step's rate, r_{i-1}[t]
            new_vB.append(pre @ W[i].T + b[i])
            new_v.append(v[t][i] + (dt / tau_v) * (vA[t + 1][i] + new_vB[i] - v[t][i]))
            new_r.append(phi[i](new_v[i]))
        v.append(new_v)
        vB.append(new_vB)
        r.append(new_r)
    return v, vB, r, vA, u


def brute_force_dfc_update(W, b, Q, phi, x, target, cfg):
    """-2/(B T) sum_{t=0}^{T-1} sum_b [phi(v_i[t]) - phi(vB_i[t])] r_{i-1}[t]^T, r_0 = x."""
    v, vB, r, _, u = brute_force_simulation(W, b, Q, phi, x, target, cfg)
    B, T = x.shape[0], cfg.steps
    assert len(v) == T
    dW, db = [], []
    for i in range(len(W)):
        gw, gb = torch.zeros_like(W[i]), torch.zeros_like(b[i])
        for t in range(T):
            s = phi[i](v[t][i]) - phi[i](vB[t][i])
            pre = x if i == 0 else r[t][i - 1]
            for k in range(B):
                gw += torch.outer(s[k], pre[k])
                gb += s[k]
        dW.append(-2.0 / (B * T) * gw)
        db.append(-2.0 / (B * T) * gb)
    return dW, db, {"v": v, "vB": vB, "r": r, "u": u}


BRUTE_FORCE_SETTINGS = [
    # the paper's default first
    {"proactive": True, "inst_transmission": True, "k_p": 2.0, "tau_apical": None},
    {"proactive": False, "inst_transmission": False, "k_p": 2.0, "tau_apical": None},
    {"proactive": True, "inst_transmission": False, "k_p": 0.0, "tau_apical": 0.1},
    {"proactive": False, "inst_transmission": True, "k_p": 1.0, "tau_apical": 0.05},
]


@pytest.mark.parametrize(
    "setting", BRUTE_FORCE_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items())
)
def test_dfc_update_matches_brute_force_simulation(setting):
    W, b, Q, phi, p = tanh_net_tensors(feedback="random")
    x, y = batch(n=4, seed=7, n_in=5, n_out=3)
    cfg = SimulationConfig(
        dt=0.02, steps=50, tau_v=0.1, alpha=0.05, early_stop=False, outer_every=1, **setting
    )
    lam = 0.5  # large enough that the O(lambda^2) presynaptic correction matters
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "cross_entropy", lam)
    want_w, want_b, traj = brute_force_dfc_update(W, b, Q, phi, x, target, cfg)

    up = forward_update("dfc", p, x, y, "cross_entropy", lam, cfg)
    assert up.stats["steps"] == 49
    for got, want in zip(up.weights + up.biases, want_w + want_b, strict=True):
        assert rel_err([got], [want]) < 1e-10
    # the simulated final state too
    res = simulate(p, x, ff, target, cfg)
    assert rel_err([res.u], [traj["u"][-1]]) < 1e-10
    assert rel_err(res.v, traj["v"][-1]) < 1e-10
    # the presynaptic rates really move: pairing s_i[t] with the feedforward rates would differ
    frozen_pre = []
    for i in (1, 2):
        s_sum = sum(phi[i](traj["v"][t][i]) - phi[i](traj["vB"][t][i]) for t in range(cfg.steps))
        frozen_pre.append(-2.0 / (4 * cfg.steps) * s_sum.T @ ff.r[i - 1])
    assert rel_err(frozen_pre, want_w[1:]) > 1e-6


def test_dfc_update_matches_brute_force_for_weight_product_feedback_and_mse():
    W, b, Q, phi, p = tanh_net_tensors(seed=4, feedback="weight_product")
    x, _ = batch(n=3, seed=8, n_in=5, n_out=3)
    y = torch.randn(3, 3, dtype=DT)
    cfg = SimulationConfig(
        dt=0.02, steps=50, tau_v=0.2, alpha=0.01, k_p=2.0, early_stop=False, outer_every=1
    )
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "mse", 0.3)
    want_w, want_b, _ = brute_force_dfc_update(W, b, Q, phi, x, target, cfg)
    up = forward_update("dfc", p, x, y, "mse", 0.3, cfg)
    assert (
        rel_err(up.tensors(), [t for pair in zip(want_w, want_b, strict=True) for t in pair])
        < 1e-10
    )


def brute_force_feedback_grads(W, b, Q, phi, x, cfg, generator, weight_decay, sigma_floor=0.01):
    """grad Q_i = s_i / ((T-1) B) sum_{t=0}^{T-2} v^A_i[t]^T u[t+1] + wd Q_i,
    with s_i = 1 / max(sigma_i, floor)^2."""
    pre = x
    for i in range(len(W)):
        pre = phi[i](pre @ W[i].T + b[i])
    target = pre  # the controller holds the noise-free feedforward output
    _, _, _, vA, u = brute_force_simulation(W, b, Q, phi, x, target, cfg, noise_generator=generator)
    B, T, L = x.shape[0], cfg.steps, len(W)
    grads = []
    for i in range(L):
        sigma_i = cfg.output_sigma if i == L - 1 else cfg.sigma
        s_i = 1.0 / max(sigma_i, sigma_floor) ** 2
        acc = torch.zeros_like(Q[i])
        for t in range(T - 1):
            acc += vA[t][i].T @ u[t + 1]
        grads.append(s_i / ((T - 1) * B) * acc + weight_decay * Q[i])
    return grads


@pytest.mark.parametrize(
    "cfg, wd",
    [
        (dataclasses.replace(sleep_defaults(), steps=30), 0.0),  # sigma below the floor: scale 1e4
        (
            SimulationConfig(
                dt=0.01,
                steps=25,
                k_p=0.0,
                alpha=0.1,
                tau_v=0.05,
                tau_apical=None,
                proactive=True,
                sigma=0.05,
                sigma_output=0.02,
                early_stop=True,
            ),
            0.1,
        ),
        (
            SimulationConfig(
                dt=0.01,
                steps=25,
                k_p=0.5,
                alpha=0.1,
                tau_v=0.05,
                tau_apical=0.2,
                proactive=False,
                inst_transmission=False,
                sigma=0.0,
                sigma_output=0.03,
            ),
            0.01,
        ),
    ],
    ids=["sleep_defaults", "proactive-instant-apical", "output-noise-only"],
)
def test_feedback_update_matches_brute_force_sleep_simulation(cfg, wd):
    W, b, Q, phi, p = tanh_net_tensors(seed=5, feedback="random")
    x, _ = batch(n=4, seed=9, n_in=5, n_out=3)
    grads, stats = feedback_update(
        p, x, cfg, weight_decay=wd, generator=torch.Generator().manual_seed(123)
    )
    want = brute_force_feedback_grads(W, b, Q, phi, x, cfg, torch.Generator().manual_seed(123), wd)
    assert stats["steps"] == cfg.steps - 1 and stats["finite"] == 1.0
    assert [g.shape for g in grads] == [q.shape for q in Q]
    for got, w in zip(grads, want, strict=True):
        assert rel_err([got], [w]) < 1e-10
    # a different noise stream gives a different update (the noise is really used)
    other = brute_force_feedback_grads(W, b, Q, phi, x, cfg, torch.Generator().manual_seed(124), wd)
    assert rel_err(other, want) > 1e-3


def test_feedback_update_without_noise_raises():
    _, _, _, _, p = tanh_net_tensors()
    x, _ = batch(n=2, n_in=5, n_out=3)
    with pytest.raises(ValueError, match="noise"):
        feedback_update(p, x, dataclasses.replace(sleep_defaults(), sigma=0.0))


# =========================================================================== float32


@pytest.mark.parametrize("variant", ["dfc_ssa", "dfc", "dfc_ss"])
def test_float32_updates_match_float64(variant):
    net64 = make_net(feedback_init="weight_product")
    net32 = copy.deepcopy(net64).float()
    x, y = batch(n=6, seed=3)
    cfg = realistic_cfg()
    up64 = forward_update(variant, net64.params(), x, y, "cross_entropy", 1e-2, cfg)
    up32 = forward_update(variant, net32.params(), x.float(), y, "cross_entropy", 1e-2, cfg)
    assert all(t.dtype == torch.float32 for t in up32.tensors())
    assert all(torch.isfinite(t).all() for t in up32.tensors())
    assert cosine(up32.tensors(), up64.tensors()) >= 0.999


@pytest.mark.parametrize("numerics", ["fast", "exact"])
def test_float32_feedback_update(numerics):
    """A float32 network's sleep update is the float64 network's (the same weights), rounded to
    float32: with the same noise (``same_noise`` for exact's Gaussian draws; fast's two-point
    draws are the same bits from the same seed), to float32's rounding (measured 5e-8)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
    from harness import same_noise

    from lightning_dfc.core.numerics import NUMERICS

    net64 = make_net(feedback_init="xavier_normal")
    net32 = copy.deepcopy(net64).float()
    x, _ = batch(n=4)
    cfg = NUMERICS[numerics].resolve(dataclasses.replace(sleep_defaults(), steps=20))
    with same_noise(0):
        g64, _ = feedback_update(net64.params(), x, cfg, generator=torch.Generator().manual_seed(0))
    with same_noise(0):
        g32, _ = feedback_update(net32.params(), x.float(), cfg, generator=torch.Generator().manual_seed(0))
    assert len(g32) == len(g64) == 3 and all(g.dtype == torch.float32 for g in g32)
    for a, b in zip(g32, g64):
        assert float(b.norm()) > 0
        assert float((a.double() - b).norm()) <= 1e-6 * float(b.norm())


# =========================================================================== convergence criterion


@pytest.fixture(scope="module")
def mixed_convergence_problem():
    """Samples 0-3 converge (sample 0 has zero error); samples 4-6 cannot in the simulated time."""
    net = make_net(feedback_init="weight_product")
    p = net.params()
    x, _ = batch(n=7, seed=4)
    ff = feedforward(p, x)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(7, 4, dtype=DT, generator=g)
    delta[0] = 0.0  # zero error: error_final = 0 <= eps^2 * 0, converged
    delta[1:4] *= 1e-4  # small steps settle to the residual threshold quickly
    delta[4:] *= 0.5  # large steps leave a residual above the threshold
    target = ff.r[-1] + delta
    cfg = SimulationConfig(
        dt=0.02, steps=400, k_p=2.0, tau_v=0.2, alpha=0.01, early_stop=False, outer_every=1
    )
    converged, diverged = ConvergenceCriterion().classify(simulate(p, x, ff, target, cfg))
    assert converged.tolist() == [True] * 4 + [False] * 3
    assert not diverged.any()
    return p, x, ff, target, cfg, converged


def _sub_ff(ff, mask):
    return type(ff)(tuple(t[mask] for t in ff.v), tuple(t[mask] for t in ff.r))


@pytest.mark.parametrize("rule_fn", [dfc_ss_update, dfc_update], ids=["dfc_ss", "dfc"])
def test_exclude_equals_update_on_converged_samples_only(mixed_convergence_problem, rule_fn):
    p, x, ff, target, cfg, conv = mixed_convergence_problem
    full = rule_fn(p, x, ff, target, cfg, ConvergenceCriterion(exclude=True))
    sub = rule_fn(p, x[conv], _sub_ff(ff, conv), target[conv], cfg, ConvergenceCriterion())
    scale = conv.sum().item() / x.shape[0]
    assert sub.stats["non_converged"] == 0
    assert rel_err(full.tensors(), [scale * t for t in sub.tensors()]) < 1e-8
    assert (
        full.stats["non_converged"] == 3
        and full.stats["excluded"] == 3
        and full.stats["diverged"] == 0
    )
    # without exclusion the non-converged samples are counted but included
    incl = rule_fn(p, x, ff, target, cfg, ConvergenceCriterion(exclude=False))
    assert incl.stats["non_converged"] == 3 and incl.stats["excluded"] == 0
    assert rel_err(incl.tensors(), full.tensors()) > 0.5


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
def test_exclude_everything_gives_exactly_zero_update(variant):
    net = make_net()
    x, y = batch(n=4)
    cfg = SimulationConfig(dt=0.02, steps=5, k_p=2.0, tau_v=0.2, alpha=0.01)
    up = forward_update(
        variant, net.params(), x, y, "cross_entropy", 0.1, cfg, ConvergenceCriterion(exclude=True)
    )
    assert up.stats["non_converged"] == 4 and up.stats["excluded"] == 4
    assert all(torch.count_nonzero(t) == 0 for t in up.tensors())
    kept = forward_update(
        variant, net.params(), x, y, "cross_entropy", 0.1, cfg, ConvergenceCriterion()
    )
    assert kept.stats["non_converged"] == 4 and kept.stats["excluded"] == 0
    assert flat(kept.tensors()).norm() > 0


# =========================================================================== divergence


@pytest.mark.parametrize(
    "cfg",
    [
        realistic_cfg(),
        realistic_cfg(early_stop=False, steps=300),
        SimulationConfig(dt=0.2, steps=200, k_p=1000.0, tau_v=0.2, alpha=0.01),
        SimulationConfig(dt=0.2, steps=200, k_p=1000.0, tau_v=0.2, alpha=0.01, early_stop=False),
    ],
    ids=[
        "positive-feedback",
        "positive-feedback-no-early-stop",
        "huge-gain",
        "huge-gain-no-early-stop",
    ],
)
@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
def test_divergence_is_reported_not_raised(cfg, variant):
    net = make_net(feedback_init="weight_product")
    p = net.params()
    p = p._replace(feedback=tuple(-q for q in p.feedback))  # Q = -J^T-like: positive feedback loop
    x, y = batch(n=4)
    up = forward_update(variant, p, x, y, "cross_entropy", 1e-2, cfg)
    assert up.stats["finite"] == 0.0 or up.stats["diverged"] > 0
    assert up.stats["non_converged"] == 4


def _single_sample_divergence_problem():
    """One linear layer, Q_L = diag(1, -30): error along output 1 is controlled, along output 2 it
    is amplified. Samples 0-2 only have errors on output 1 (their output-2 components stay exactly
    0); sample 3 has an error on output 2 and blows up to inf/nan."""
    torch.manual_seed(0)
    net = DFCNetwork(nn.Sequential(nn.Linear(3, 2))).double()
    p = net.params()._replace(feedback=(torch.diag(torch.tensor([1.0, -30.0], dtype=DT)),))
    x = torch.randn(4, 3, dtype=DT)
    ff = feedforward(p, x)
    delta = torch.zeros(4, 2, dtype=DT)
    delta[:3, 0] = torch.tensor([0.05, -0.03, 0.08], dtype=DT)
    delta[3, 1] = 0.1
    return p, x, ff, ff.r[-1] + delta


def _unstable_mlp_problem():
    """6-8-7-4 tanh network with negated weight-product feedback and a huge proportional gain:
    every sample blows up (to ~1e177 by step 60, inf later)."""
    net = make_net(feedback_init="weight_product")
    p = net.params()
    p = p._replace(feedback=tuple(-q for q in p.feedback))
    x, y = batch(n=4)
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "cross_entropy", 1e-2)
    cfg = SimulationConfig(dt=0.2, steps=200, k_p=1000.0, tau_v=0.2, alpha=0.01, early_stop=True)
    return p, x, ff, target, cfg


def _single_sample_problem_with_cfg():
    cfg = SimulationConfig(dt=0.02, steps=1000, k_p=0.5, tau_v=0.2, alpha=0.01, early_stop=True)
    return (*_single_sample_divergence_problem(), cfg)


@pytest.mark.parametrize(
    "problem",
    [_single_sample_problem_with_cfg, _unstable_mlp_problem],
    ids=["one-sample-diverges", "all-samples-diverge"],
)
def test_early_stop_does_not_trigger_on_an_overflowing_state(problem):
    p, x, ff, target, cfg = problem()
    res = simulate(p, x, ff, target, cfg)
    # while the state grows without bound the dynamics have not settled: either the simulation
    # runs to the end or it stops because the state became non-finite
    assert res.steps_simulated == cfg.steps - 1 or not res.finite, (
        res.steps_simulated,
        res.u.abs().max(),
    )


@pytest.mark.parametrize("rule_fn", [dfc_ss_update, dfc_update], ids=["dfc_ss", "dfc"])
def test_exclude_drops_a_diverged_sample(rule_fn):
    p, x, ff, target = _single_sample_divergence_problem()
    cfg = SimulationConfig(
        dt=0.02, steps=1000, k_p=0.5, tau_v=0.2, alpha=0.01, early_stop=False, outer_every=1
    )
    res = simulate(p, x, ff, target, cfg)
    converged, diverged = ConvergenceCriterion().classify(res)
    assert converged.tolist() == [True, True, True, False]
    assert diverged.tolist() == [False, False, False, True]
    assert not res.finite  # sample 3 overflowed
    up = rule_fn(p, x, ff, target, cfg, ConvergenceCriterion(exclude=True))
    sub = rule_fn(p, x[converged], _sub_ff(ff, converged), target[converged], cfg)
    # expected: sample 3 is dropped like any other non-converged sample
    assert rel_err(up.tensors(), [0.75 * t for t in sub.tensors()]) < 1e-8
    assert up.stats["excluded"] == 1


def test_exclude_everything_with_noise_gives_zero_update():
    net = make_net()
    x, y = batch(n=4)
    cfg = SimulationConfig(dt=0.02, steps=5, k_p=2.0, tau_v=0.2, alpha=0.01, sigma=0.01)
    up = forward_update(
        "dfc",
        net.params(),
        x,
        y,
        "cross_entropy",
        0.1,
        cfg,
        ConvergenceCriterion(exclude=True),
        generator=torch.Generator().manual_seed(0),
    )
    assert up.stats["excluded"] == 4
    # every sample is excluded: nothing may remain of the update
    assert all(torch.count_nonzero(t) == 0 for t in up.tensors())


# ============================================================ output target / loss gradient


def test_output_target_cross_entropy():
    torch.manual_seed(0)
    out = torch.randn(5, 4, dtype=DT)
    y = torch.tensor([0, 3, 1, 1, 2])
    lam = 0.3
    delta = output_target(out, y, "cross_entropy", lam) - out
    expected = -lam * (torch.softmax(out, 1) - F.one_hot(y, 4).to(DT)) / 5
    torch.testing.assert_close(delta, expected, rtol=1e-12, atol=1e-15)
    o = out.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(o, y), o)
    torch.testing.assert_close(delta, -lam * grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss_gradient(out, y, "cross_entropy"), grad, rtol=1e-12, atol=1e-15)


def test_output_target_mse():
    torch.manual_seed(0)
    out = torch.randn(5, 4, dtype=DT)
    y = torch.randn(5, 4, dtype=DT)
    lam = 0.3
    delta = output_target(out, y, "mse", lam) - out
    torch.testing.assert_close(delta, -lam * 2 * (out - y) / (5 * 4), rtol=1e-12, atol=1e-15)
    o = out.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.mse_loss(o, y), o)
    torch.testing.assert_close(delta, -lam * grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "loss, y",
    [
        ("cross_entropy", torch.tensor([0.0, 1.0, 2.0])),  # float labels
        ("cross_entropy", torch.tensor([[0], [1], [2]])),  # (B, 1)
        ("cross_entropy", torch.zeros(3, 4, dtype=torch.long)),  # one-hot-like (B, n_L)
        ("mse", torch.zeros(3, 3, dtype=DT)),  # wrong width
        ("mse", torch.zeros(3, dtype=DT)),  # labels instead of targets
        ("hinge", torch.tensor([0, 1, 2])),  # unknown loss
    ],
)
def test_output_target_rejects_bad_labels(loss, y):
    out = torch.randn(3, 4, dtype=DT)
    with pytest.raises(ValueError):
        output_target(out, y, loss, 0.1)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int16])
def test_output_target_accepts_any_integer_label_dtype(label_dtype):
    """Integer labels of any dtype give the same target as int64 labels (they are cast)."""
    out = torch.randn(3, 4, dtype=DT)
    y = torch.tensor([0, 1, 3])
    torch.testing.assert_close(
        loss_gradient(out, y.to(label_dtype), "cross_entropy"), loss_gradient(out, y, "cross_entropy")
    )
    o = out.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(o, y), o)
    torch.testing.assert_close(loss_gradient(out, y.to(label_dtype), "cross_entropy"), grad)


# =========================================================================== output Jacobian


def independent_output(params: LayerParams, x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """r_L for one sample when every pre-activation v_i is shifted by its block of ``shifts``."""
    blocks = torch.split(shifts, [w.shape[0] for w in params.weights])
    h = x
    for w, b, act, s in zip(params.weights, params.biases, params.activations, blocks, strict=True):
        h = act(w @ h + (0 if b is None else b) + s)
    return h


@pytest.mark.parametrize("at_feedforward", [True, False])
def test_output_jacobian_matches_autodiff(at_feedforward):
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Linear(8, 7),
        nn.Sigmoid(),
        nn.Linear(7, 5),
        nn.LeakyReLU(0.1),
        nn.Linear(5, 4),
        nn.Tanh(),
    ).double()
    p = DFCNetwork(seq).params()
    x = torch.randn(3, 6, dtype=DT)
    total = sum(w.shape[0] for w in p.weights)
    shifts = (
        torch.zeros(3, total, dtype=DT) if at_feedforward else 0.5 * torch.randn(3, total, dtype=DT)
    )
    # the pre-activations at the (shifted) point, from the independent forward pass
    vs = []
    for k in range(3):
        blocks = torch.split(shifts[k], [w.shape[0] for w in p.weights])
        h, v_k = x[k], []
        for w, b, act, s in zip(p.weights, p.biases, p.activations, blocks, strict=True):
            v_k.append(w @ h + b + s)
            h = act(v_k[-1])
        vs.append(v_k)
    v = [torch.stack([vs[k][i] for k in range(3)]) for i in range(len(p.weights))]
    if at_feedforward:
        for a, b in zip(v, feedforward(p, x).v, strict=True):
            torch.testing.assert_close(a, b)
    jac = output_jacobian(p, v)
    assert jac.shape == (3, 4, total)
    for k in range(3):
        want = jacrev(lambda s, xk=x[k]: independent_output(p, xk, s))(shifts[k])
        torch.testing.assert_close(jac[k], want, rtol=1e-12, atol=1e-14)


# =========================================================================== Activation.difference


ALL_ACTIVATIONS = [
    Activation("tanh"),
    Activation("sigmoid"),
    Activation("linear"),
    Activation("relu"),
    Activation("leaky_relu", 0.2),
]


@pytest.mark.parametrize("act", ALL_ACTIVATIONS, ids=lambda a: a.name)
def test_activation_difference_float64(act):
    g = torch.Generator().manual_seed(0)
    a = 3 * torch.randn(500, dtype=DT, generator=g)
    b = torch.cat(
        [
            a[:250] + 1e-3 * torch.randn(250, dtype=DT, generator=g),
            3 * torch.randn(250, dtype=DT, generator=g),
        ]
    )
    torch.testing.assert_close(act.difference(a, b), act(a) - act(b), rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(act.difference(a, a)) == 0


def _float32_errors(act, lo, hi, n=2000):
    """Max relative errors of difference(a, b) and of phi(a) - phi(b), float32, a = b + 1e-6."""
    g = torch.Generator().manual_seed(1)
    b = torch.empty(n, dtype=torch.float32).uniform_(lo, hi, generator=g)
    a = b + 1e-6
    assert torch.all(a != b)
    exact = act(a.double()) - act(b.double())  # the same float32 inputs, differenced in float64
    good = (act.difference(a, b).double() - exact).abs() / exact.abs()
    naive = ((act(a) - act(b)).double() - exact).abs() / exact.abs()
    return good.max().item(), naive.max().item()


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_activation_difference_float32_beats_naive(name):
    good, naive = _float32_errors(Activation(name), -3.0, 3.0)
    assert good < 1e-4
    assert naive > 1e-2 and naive > 100 * good


@pytest.mark.parametrize(
    "act, lo, hi",
    [
        (Activation("linear"), -3.0, 3.0),
        (Activation("relu"), 0.1, 3.0),
        (Activation("leaky_relu", 0.2), 0.1, 3.0),
    ],
    ids=["linear", "relu", "leaky_relu-positive"],
)
def test_activation_difference_float32_exact_cases(act, lo, hi):
    good, _ = _float32_errors(act, lo, hi)
    assert good < 1e-4


def test_activation_difference_float32_leaky_relu_negative():
    good, _ = _float32_errors(Activation("leaky_relu", 0.2), -3.0, -0.1)
    assert good < 1e-4


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
def test_early_stop_with_exclusion_excludes_what_the_full_run_excludes(variant):
    """An early stop waits for the reference's fixed-point criterion when samples are excluded."""
    net = make_net(feedback_init="weight_product")
    x, y = batch(n=5)
    kw = dict(dt=0.02, steps=1000, k_p=2.0, tau_v=0.2, alpha=0.01)
    criterion = ConvergenceCriterion(exclude=True)
    full = forward_update(variant, net.params(), x, y, "cross_entropy", 1e-2,
                          SimulationConfig(early_stop=False, outer_every=1, **kw), criterion)
    early = forward_update(variant, net.params(), x, y, "cross_entropy", 1e-2, SimulationConfig(**kw), criterion)
    assert early.stats["excluded"] == full.stats["excluded"] < 5
    a, b = (torch.cat([t.flatten() for t in u.tensors()]) for u in (full, early))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.9999


def test_identity_output_feedback_is_not_multiplied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Q_L = I (fixed feedback) with a wide output: the drive's last block is u itself instead of
    a GEMM with the identity. Same simulation as the plain GEMM, to rounding."""
    import lightning_dfc.core.dynamics as dynamics

    net = make_net(sizes=[6, 9, 64], feedback_init="weight_product")
    params = net.params()
    assert torch.equal(params.feedback[-1], torch.eye(64, dtype=DT))
    x, _ = batch(n=5, n_in=6)
    ff = feedforward(params, x)
    target = ff.r[-1] + 0.05 * torch.randn(5, 64, dtype=DT, generator=torch.Generator().manual_seed(3))
    cfg = realistic_cfg(steps=300, early_stop=False, outer_every=1)
    seen = []
    original = dynamics._is_identity
    monkeypatch.setattr(dynamics, "_is_identity", lambda q: seen.append(original(q)) or seen[-1])
    skipped = simulate(params, x, ff, target, cfg, accumulate_forward=True)
    assert seen == [True]  # the identity path was taken
    monkeypatch.setattr(dynamics, "_is_identity", lambda q: False)
    plain = simulate(params, x, ff, target, cfg, accumulate_forward=True)
    for a, b in zip([skipped.u, *skipped.dv, *skipped.signal_sum, *skipped.outer_sum[1:]],
                    [plain.u, *plain.dv, *plain.signal_sum, *plain.outer_sum[1:]]):
        assert rel_err(a, b) < 1e-13
