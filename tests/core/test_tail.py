"""The fast numerics' early stop (core/tail.py) against its definitions.

* The fixed point solves e(r_L) = alpha u with the somata at steady state, and is where a long
  simulation ends.
* ``LinearizedMap.solve`` is (I - A)^{-1} for A the Jacobian of one Euler step at the fixed
  point, taken by autograd from an independent one-step function written from the equations in
  ``core/dynamics.py``, for every variant of the dynamics.
* The early stop's update equals the full simulation's (float64, so that only the tail's own
  error shows), for the time-average and the last-point rules, and waits where the caller's
  convergence test of a sample is borderline.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import jacfwd

from lightning_dfc import MLP, DFCNetwork, SimulationConfig
from lightning_dfc.core.dynamics import feedforward, simulate
from lightning_dfc.core.numerics import EXACT, FAST
from lightning_dfc.core.rules import ConvergenceCriterion, dfc_update
from lightning_dfc.core.methods import forward_update
from lightning_dfc.core.losses import output_delta, strong_target
from lightning_dfc.core.tail import Deviation, LinearizedMap, OutputError, controlled_sweep, fixed_point

DT = torch.float64
SIZES = [6, 8, 7, 4]

pytestmark = pytest.mark.usefixtures("one_thread")


def make(seed=0, sizes=SIZES, batch=3):
    torch.manual_seed(seed)
    net = DFCNetwork(MLP(sizes, activation="tanh"), feedback_init="weight_product").double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, sizes[0], dtype=DT, generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return net.params(), x, y


def errors(params, x, y, kind):
    ff = feedforward(params, x)
    if kind == "linear":
        return ff, OutputError("linear", None, output_delta(ff.r[-1], y, "cross_entropy", 0.5), ff.r[-1])
    target, _ = strong_target(ff.r[-1], y, "cross_entropy", 0.9)
    return ff, OutputError("softmax", target, None, ff.r[-1])


@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_fixed_point_is_the_steady_state_and_where_a_long_simulation_ends(kind):
    params, x, y = make()
    ff, error = errors(params, x, y, kind)
    alpha = 0.05
    point = fixed_point(params, ff, error, alpha, torch.zeros_like(ff.r[-1]), max_iterations=50)  # from afar
    assert point.converged
    dv, dr = controlled_sweep(params, ff, point.u)
    residual = error(dr[-1]) - alpha * point.u
    assert float(residual.abs().max()) < 1e-13
    cfg = EXACT.resolve(SimulationConfig(dt=0.02, steps=30000, k_p=2.0, alpha=alpha, tau_v=0.2))
    result = simulate(params, x, ff, error.target, cfg, delta=error.delta, output_error=kind)
    torch.testing.assert_close(result.u, point.u, rtol=1e-9, atol=1e-12)
    for a, b in zip(result.dv, point.dv):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def euler_step(params, ff, error, cfg):
    """One Euler step of the deviation-form state (u_int, u, c, dv_1..dv_L) of one sample, written
    from the recursion at the top of core/dynamics.py (noise-free)."""
    a, b, n_out = cfg.apical_rate, cfg.dt / cfg.tau_v, params.sizes[-1]
    sizes = params.sizes[1:]

    def step(state, sample):
        u_int, u, c = state[:n_out], state[n_out:2 * n_out], state[2 * n_out:3 * n_out]
        dv = list(torch.split(state[3 * n_out:], sizes))
        dr = [act.rate_deviation(ff.v[i][sample], ff.r[i][sample], dv[i]) for i, act in enumerate(params.activations)]
        e = error_one(error, dr[-1], sample)
        if cfg.k_p > 0:
            u_int = u_int + cfg.dt * (e - cfg.alpha * u)
            u_new = u_int + cfg.k_p * e
        else:
            u_new = u + cfg.dt * (e - cfg.alpha * u)
        c = (1 - a) * c + a * (u_new if cfg.proactive else u)
        new_dv, new_dr = [], []
        for i, act in enumerate(params.activations):
            soma = params.feedback[i] @ c
            if i > 0:
                pre = new_dr[i - 1] if cfg.inst_transmission else dr[i - 1]
                soma = soma + params.weights[i] @ pre
            new_dv.append(dv[i] + b * (soma - dv[i]))
            new_dr.append(act.rate_deviation(ff.v[i][sample], ff.r[i][sample], new_dv[i]))
        return torch.cat([u_int, u_new, c, *new_dv])

    return step


def error_one(error, dr_out, sample):
    if error.kind == "linear":
        return error.delta[sample] - dr_out
    return error.target[sample] - torch.softmax(error.output_ff[sample] + dr_out, dim=0)


VARIANTS = [
    dict(proactive=True, inst_transmission=True, k_p=2.0),  # the papers' wake dynamics
    dict(proactive=False, inst_transmission=True, k_p=1.5),  # toy, Fashion-MNIST
    dict(proactive=True, inst_transmission=False, k_p=0.0),
    dict(proactive=False, inst_transmission=False, k_p=2.0, tau_apical=0.1),
    dict(proactive=True, inst_transmission=True, k_p=2.0, tau_apical=0.05),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_linearized_map_solve_is_the_inverse_of_identity_minus_the_step_jacobian(variant, kind):
    params, x, y = make(seed=3)
    ff, error = errors(params, x, y, kind)
    cfg = SimulationConfig(dt=0.02, steps=100, alpha=0.05, tau_v=0.2, **variant)
    point = fixed_point(params, ff, error, cfg.alpha, torch.zeros_like(ff.r[-1]), max_iterations=50)
    assert point.converged
    linear = LinearizedMap(params, ff, point, error, cfg)
    g = torch.Generator().manual_seed(5)
    n_out = params.sizes[-1]
    d = Deviation(torch.randn(3, n_out, dtype=DT, generator=g) if cfg.k_p > 0 else None,
                  torch.randn(3, n_out, dtype=DT, generator=g),
                  torch.randn(3, n_out, dtype=DT, generator=g) if cfg.apical_rate < 1 else None,
                  [torch.randn(3, n, dtype=DT, generator=g) for n in params.sizes[1:]])
    z = linear.solve(d)
    step = euler_step(params, ff, error, cfg)
    for sample in range(3):
        star = torch.cat([point.u[sample] * (1 - cfg.k_p * cfg.alpha), point.u[sample], point.u[sample],
                          *[dv[sample] for dv in point.dv]])
        assert torch.allclose(step(star, sample), star, atol=1e-12)  # the fixed point of the step
        jac = jacfwd(step)(star, sample)
        zero = torch.zeros(n_out, dtype=DT)
        vec = lambda dev: torch.cat([dev.integral[sample] if dev.integral is not None else zero,  # noqa: E731
                                     dev.control[sample],
                                     dev.apical[sample] if dev.apical is not None else zero,
                                     *[s[sample] for s in dev.soma]])
        # the variables a variant does not have (u_int without k_p; c when the apical compartment
        # follows u at once) influence none of the others: leave them out
        dropped = set()
        if cfg.k_p == 0:
            dropped |= set(range(n_out))
        if cfg.apical_rate == 1.0:
            dropped |= set(range(2 * n_out, 3 * n_out))
        rows = [r for r in range(jac.shape[0]) if r not in dropped]
        assert torch.count_nonzero(jac[rows][:, sorted(dropped)]) == 0
        step_jacobian = jac[rows][:, rows]
        lhs = (torch.eye(len(rows), dtype=DT) - step_jacobian) @ vec(z)[rows]
        torch.testing.assert_close(lhs, vec(d)[rows], rtol=1e-9, atol=1e-10)


def full_and_fast(variant, y_kind="linear", steps=2000, **kw):
    params, x, y = make(seed=7, batch=5)
    cfg = SimulationConfig(dt=0.02, steps=steps, alpha=0.02, tau_v=0.2, **kw)
    exact = forward_update(variant, params, x, y, "cross_entropy", 0.5, EXACT.resolve(cfg))
    fast_cfg = dataclasses.replace(EXACT.resolve(cfg), early_stop=True, tolerance=1e-5, check_every=20)
    fast = forward_update(variant, params, x, y, "cross_entropy", 0.5, fast_cfg)
    return exact, fast


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss"])
@pytest.mark.parametrize("dynamics", VARIANTS[:4], ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_early_stop_equals_the_full_simulation(variant, dynamics):
    """float64 and tolerance 1e-5: the tail's own error only, within the tolerance."""
    exact, fast = full_and_fast(variant, **dynamics)
    assert fast.stats["steps"] < exact.stats["steps"] / 4
    for a, b in zip(fast.tensors(), exact.tensors()):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm())


def test_early_stop_waits_for_a_borderline_convergence_test():
    """With non-converged samples excluded, a sample whose predicted residual at the last point
    lies within a factor 2 of the threshold keeps the simulation going."""
    params, x, y = make(seed=7, batch=5)
    cfg = dataclasses.replace(EXACT.resolve(SimulationConfig(dt=0.02, steps=1500, alpha=0.02, tau_v=0.2)),
                              early_stop=True, tolerance=1e-6)
    full = forward_update("dfc", params, x, y, "cross_entropy", 0.5, EXACT.resolve(cfg),
                          ConvergenceCriterion(exclude=True))
    ff = feedforward(params, x)
    result = simulate(params, x, ff, None, EXACT.resolve(cfg), delta=output_delta(ff.r[-1], y, "cross_entropy", 0.5))
    threshold = float(result.residual.median())  # half the samples converge, one sits on the bound
    criterion = ConvergenceCriterion(threshold=threshold, exclude=True)
    exact = forward_update("dfc", params, x, y, "cross_entropy", 0.5, EXACT.resolve(cfg), criterion)
    fast = forward_update("dfc", params, x, y, "cross_entropy", 0.5, cfg, criterion)
    assert fast.stats["steps"] == exact.stats["steps"] == 1499  # simulated in full
    assert fast.stats["non_converged"] == exact.stats["non_converged"]
    easy = forward_update("dfc", params, x, y, "cross_entropy", 0.5, cfg, ConvergenceCriterion(exclude=True))
    assert easy.stats["steps"] < 1499 and easy.stats["non_converged"] == full.stats["non_converged"]


@pytest.mark.parametrize("offset", [1e-22, 0.0], ids=["tiny", "zero"])
def test_fast_early_stop_settles_with_samples_at_their_target(offset):
    """Late in training a perfectly classified sample's target offset is 1e-20 or less (or 0). In
    float32 the squares of such entries underflow: the early stop's ratios of norms became 0 / 0
    and kept every such batch simulating to T (full MNIST, DFC, from wake epoch 18 on). The fast
    numerics (float32) must still stop early, with the update of the full float64 simulation."""
    params, x, y = make(seed=7, batch=5)
    ff = feedforward(params, x)
    delta = output_delta(ff.r[-1], y, "cross_entropy", 0.5)
    delta[:2] *= offset
    cfg = SimulationConfig(dt=0.02, steps=1500, alpha=0.02, tau_v=0.2)
    criterion = ConvergenceCriterion(exclude=True)
    exact = dfc_update(params, x, ff, None, EXACT.resolve(cfg), criterion, delta=delta)
    fast = dfc_update(params, x, ff, None, FAST.resolve(cfg), criterion, delta=delta)
    assert exact.stats["steps"] == 1499 and fast.stats["steps"] <= 16
    assert fast.stats["excluded"] == 0
    for a, b in zip(fast.tensors(), exact.tensors()):
        assert float((a - b).norm()) <= 1e-3 * float(b.norm())


def test_row_softmax_is_torchs_softmax():
    """The output error's softmax: torch's own in float64, over the transpose below (to rounding)."""
    from lightning_dfc.core.tail import _row_softmax

    z = torch.randn(128, 10, dtype=DT, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(_row_softmax(z), torch.softmax(z, dim=1))
    z32 = z.float()
    torch.testing.assert_close(_row_softmax(z32), torch.softmax(z32, dim=1), rtol=1e-6, atol=1e-7)
    assert torch.allclose(_row_softmax(z32).sum(1), torch.ones(128))
