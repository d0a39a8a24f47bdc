"""The DFC core against the theory of Meulemans et al. (2021), with independent computations.

Jacobians here come from ``torch.func`` on an independently written forward pass, never from
``lightning_dfc.core.dynamics.output_jacobian``.
"""

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from lightning_dfc import MLP, DFCNetwork, SimulationConfig
from lightning_dfc.core.dynamics import feedforward, linearized_steady_state, simulate
from lightning_dfc.core.network import LayerParams
from lightning_dfc.core.rules import bp_update, dfc_ssa_update, feedback_update
from lightning_dfc.core.methods import forward_update
from lightning_dfc.core.losses import output_target

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm())
    return math.degrees(math.acos(cos.clamp(-1, 1).item()))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def make_net(sizes, activation="tanh", bias=True, seed=0, feedback_init="weight_product") -> DFCNetwork:
    torch.manual_seed(seed)
    return DFCNetwork(MLP(sizes, activation=activation, bias=bias), feedback_init=feedback_init).to(DT)


def with_feedback(params: LayerParams, qbar: torch.Tensor) -> LayerParams:
    sizes = [w.shape[0] for w in params.weights]
    return params._replace(feedback=tuple(torch.split(qbar, sizes, dim=0)))


def independent_output(params: LayerParams, x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """r_L when every pre-activation v_i is shifted by its block of ``shifts`` (one sample)."""
    sizes = [w.shape[0] for w in params.weights]
    blocks = torch.split(shifts, sizes)
    h = x
    for w, b, act, s in zip(params.weights, params.biases, params.activations, blocks):
        v = w @ h + (0 if b is None else b) + s
        h = act(v)
    return h


def independent_jacobian(params: LayerParams, x: torch.Tensor) -> torch.Tensor:
    """J = d r_L / d vbar for one sample x (n_0,), via torch.func."""
    total = sum(w.shape[0] for w in params.weights)
    return jacrev(lambda s: independent_output(params, x, s))(torch.zeros(total, dtype=x.dtype))


def test_simulated_steady_state_matches_lemma_1():
    net = make_net([6, 8, 7, 4])
    p = net.params()
    x = torch.randn(5, 6, dtype=DT)
    y = torch.randint(0, 4, (5,))
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "cross_entropy", 1e-3)
    cfg = SimulationConfig(dt=0.02, steps=30000, k_p=2.0, alpha=0.05, tau_v=0.2, tolerance=1e-9)
    sim = simulate(p, x, ff, target, cfg)
    assert sim.steps_simulated < 29999, "did not settle"
    lin = linearized_steady_state(p, x, ff, target - ff.r[-1], cfg.alpha)
    dv_sim = torch.cat([a - b for a, b in zip(sim.v, ff.v)], 1)
    dv_lin = torch.cat([a - b for a, b in zip(lin.v, ff.v)], 1)
    assert ((dv_sim - dv_lin).norm() / dv_lin.norm()).item() < 1e-3
    assert ((sim.u - lin.u).norm() / lin.u.norm()).item() < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssa_equals_damped_minimum_norm_update_under_condition_2(seed):
    """Theorem 3: with Q = J^T M, DFC-SSA's update is the (damped) minimum-norm update."""
    net = make_net([5, 9, 8, 3], seed=seed)
    p = net.params()
    x = torch.randn(1, 5, dtype=DT)
    y = torch.randint(0, 3, (1,))
    jac = independent_jacobian(p, x[0])  # (n_L, S)
    ff = feedforward(p, x)
    target = output_target(ff.r[-1], y, "cross_entropy", 1e-4)
    delta = (target - ff.r[-1])[0]
    pres = [x[0], *[r[0] for r in ff.r[:-1]]]
    sizes = [w.shape[0] for w in p.weights]

    def mn_update(dv):
        blocks = torch.split(dv, sizes)
        return flat(
            torch.outer(act(v[0] + d) - act(v[0]), pre)
            for act, v, d, pre in zip(p.activations, ff.v, blocks, pres)
        )

    def ssa(params, alpha):
        up = dfc_ssa_update(params, x, ff, target, alpha)
        return -flat(up.weights)  # descent direction

    # Q = J^T: SSA with leak alpha is exactly the MN update damped by gamma = alpha.
    alpha = 0.1
    dv_mn = jac.T @ torch.linalg.solve(jac @ jac.T + alpha * torch.eye(3, dtype=DT), delta)
    assert angle_deg(ssa(with_feedback(p, jac.T), alpha), mn_update(dv_mn)) < 1.0
    # Q = J^T M (any invertible M): the undamped MN update in the limit alpha -> 0.
    m = torch.eye(3, dtype=DT) + 0.3 * torch.randn(3, 3, dtype=DT)
    dv_mn = jac.T @ torch.linalg.solve(jac @ jac.T, delta)
    assert angle_deg(ssa(with_feedback(p, jac.T @ m), 1e-6), mn_update(dv_mn)) < 1.0


def _scaled_to_norm(w: torch.Tensor, pre: torch.Tensor, norm: float) -> torch.Tensor:
    lo, hi = 1e-3, 1e3
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if torch.tanh(mid * w @ pre).norm() < norm:
            lo = mid
        else:
            hi = mid
    return lo * w


def test_ssa_equals_gauss_newton_under_conditions_1_and_2():
    """Theorem 2: Condition 1 (equal layer norms) + Condition 2 -> Gauss-Newton update."""
    torch.manual_seed(3)
    sizes = [5, 8, 8, 3]
    x = torch.randn(5, dtype=DT)
    c = 1.5
    x = c * x / x.norm()
    weights, pre = [], x
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        w = _scaled_to_norm(torch.randn(n_out, n_in, dtype=DT), pre, c)
        weights.append(w)
        pre = torch.tanh(w @ pre)
    weights.append(torch.randn(sizes[-1], sizes[-2], dtype=DT) / 3)
    acts = tuple(make_net(sizes).activations)
    p = LayerParams(tuple(weights), (None,) * 3, acts, ())
    ff = feedforward(p, x[None])
    assert all(abs(r.norm().item() - c) < 1e-9 for r in ff.r[:-1])  # Condition 1
    jac = independent_jacobian(p, x)
    p = with_feedback(p, jac.T)  # Condition 2
    y = torch.randint(0, 3, (1,))
    target = output_target(ff.r[-1], y, "cross_entropy", 1e-4)
    delta = (target - ff.r[-1])[0]
    alpha = 1e-3
    # Theorem 2 is stated for the linear rule (v_i - v^B_i) r_{i-1}^T (paper, below Theorem 2).
    update = -flat(dfc_ssa_update(p, x[None], ff, target, alpha, rule="voltage_difference").weights)

    def out_of_weights(*ws):
        h = x
        for w, act in zip(ws, acts):
            h = act(w @ h)
        return h

    jw = torch.cat([j.reshape(3, -1) for j in jacrev(out_of_weights, argnums=(0, 1, 2))(*weights)], 1)
    gamma = alpha * c**2
    gn = jw.T @ torch.linalg.solve(jw @ jw.T + gamma * torch.eye(3, dtype=DT), delta)
    assert angle_deg(update, gn) < 1.0


def test_proposition_4_descent_direction_for_random_feedback():
    """Random Q with stable dynamics: the steady-state update (layer-specific learning rates
    1/||r_{i-1}||^2) lies within 90 degrees of the negative loss gradient."""
    stable = 0
    for seed in range(40):
        net = make_net([6, 10, 10, 4], seed=seed, feedback_init="xavier_normal")
        p = net.params()
        x = torch.randn(1, 6, dtype=DT)
        y = torch.randint(0, 4, (1,))
        jac = independent_jacobian(p, x[0])
        alpha = 1e-6
        eig = torch.linalg.eigvals(-(jac @ torch.cat(p.feedback) + alpha * torch.eye(4, dtype=DT)))
        if eig.real.max() >= 0:  # Condition 3 violated: the proposition does not apply
            continue
        stable += 1
        ff = feedforward(p, x)
        target = output_target(ff.r[-1], y, "cross_entropy", 1e-4)
        up = dfc_ssa_update(p, x, ff, target, alpha)
        pres = [x, *ff.r[:-1]]
        scaled = flat(w / pre.pow(2).sum() for w, pre in zip(up.weights, pres))
        grad = flat(bp_update(p, x, y, "cross_entropy").weights)
        assert angle_deg(scaled, grad) < 90.0
    assert stable >= 10


def test_dfc_variants_agree_for_small_lambda():
    net = make_net([12, 16, 16, 5], seed=4)
    p = net.params()
    x = torch.randn(16, 12, dtype=DT)
    y = torch.randint(0, 5, (16,))
    cfg = SimulationConfig(dt=0.02, steps=3000, k_p=2.0, alpha=0.01, tau_v=0.2, tolerance=1e-6)
    ups = {v: flat(forward_update(v, p, x, y, "cross_entropy", 1e-3, cfg).tensors())
           for v in ("dfc", "dfc_ss", "dfc_ssa")}
    cos = torch.nn.functional.cosine_similarity
    assert cos(ups["dfc"], ups["dfc_ss"], dim=0) >= 0.99
    assert cos(ups["dfc_ss"], ups["dfc_ssa"], dim=0) >= 0.99
    assert cos(ups["dfc"], ups["dfc_ssa"], dim=0) >= 0.99


def test_feedback_learning_aligns_q_with_damped_pseudoinverse_on_linear_network():
    """Theorem 6: on a linear network, sleep-phase learning drives Q toward J^T (J J^T + g I)^-1."""
    torch.manual_seed(5)
    net = DFCNetwork(MLP([6, 8, 7, 3], activation="linear", init_gain=1.0), feedback_init="xavier_normal")
    net = net.to(DT)
    p = net.params()
    jac = independent_jacobian(p, torch.zeros(6, dtype=DT))
    cfg = SimulationConfig(dt=0.005, steps=100, k_p=0.0, alpha=0.1, tau_v=0.02, tau_apical=0.1,
                           proactive=False, sigma=0.01, early_stop=False)
    q0 = torch.cat([q.detach().clone() for q in net.feedback])
    gen = torch.Generator().manual_seed(0)
    lr = 0.4
    for _ in range(100):  # large batches: the cost is per simulated step, not per sample
        grads, _ = feedback_update(net.params(), torch.randn(256, 6, dtype=DT), cfg, weight_decay=0.0, generator=gen)
        with torch.no_grad():
            for q, g in zip(net.trainable_feedback(), grads):
                q.sub_(lr * g)
    qbar = torch.cat([q.detach() for q in net.feedback])
    best = min(
        angle_deg(qbar, jac.T @ torch.linalg.inv(jac @ jac.T + g * torch.eye(3, dtype=DT)))
        for g in (0.0, 0.01, 0.1, 1.0)
    )
    start = angle_deg(q0, jac.T @ torch.linalg.inv(jac @ jac.T))
    assert best < 10.0, (start, best)


def test_bp_update_equals_autograd_through_the_users_network():
    torch.manual_seed(0)
    seq = MLP([7, 9, 4]).to(DT)
    net = DFCNetwork(seq)
    x, y = torch.randn(8, 7, dtype=DT), torch.randint(0, 4, (8,))
    up = bp_update(net.params(), x, y, "cross_entropy")
    seq.zero_grad()
    nn.functional.cross_entropy(seq(x), y).backward()
    for u, param in zip(up.tensors(), net.forward_parameters()):
        torch.testing.assert_close(u, param.grad)


def test_dfa_update_equals_closed_form():
    torch.manual_seed(0)
    net = make_net([7, 9, 6, 4], feedback_init="xavier_normal")
    p = net.params()
    x, y = torch.randn(5, 7, dtype=DT), torch.randint(0, 4, (5,))
    lam = 0.01
    up = forward_update("dfa", p, x, y, "cross_entropy", lam, SimulationConfig())
    seq = net.network
    h1 = seq[0](x)
    r1 = torch.tanh(h1)
    h2 = seq[2](r1)
    r2 = torch.tanh(h2)
    out = seq[4](r2)
    probs = torch.softmax(out, 1)
    e = (probs - nn.functional.one_hot(y, 4).to(DT)) / 5  # d(mean CE)/d out
    expected_w = []
    for b_idx in range(5):  # per-sample loop on purpose: an independent computation
        d1 = (1 - r1[b_idx] ** 2) * (p.feedback[0] @ (lam * e[b_idx]))
        d2 = (1 - r2[b_idx] ** 2) * (p.feedback[1] @ (lam * e[b_idx]))
        d3 = lam * e[b_idx]
        terms = [torch.outer(d1, x[b_idx]), torch.outer(d2, r1[b_idx]), torch.outer(d3, r2[b_idx])]
        expected_w = terms if not expected_w else [a + t for a, t in zip(expected_w, terms)]
    for got, want in zip(up.weights, expected_w):
        torch.testing.assert_close(got, 2 / 5 * want)
