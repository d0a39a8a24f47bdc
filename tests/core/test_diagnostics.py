"""Diagnostics (lightning_dfc.core.diagnostics) and their torchmetrics wrappers (lightning_dfc.shell.metrics).

Cases whose answers are known by construction, and independent computations: per-sample loops,
Jacobians from ``torch.func`` on forward passes written here, a vector field written here, and the
simulator itself for the stability rates.
"""

import math

import pytest
import torch
from torch.func import jacrev

from lightning_dfc import MLP, DFCNetwork, SimulationConfig
from lightning_dfc.core.diagnostics import (
    alignment_angles,
    angle,
    condition_1,
    condition_2,
    condition_3,
    damped_gauss_newton_update,
    damped_minimum_norm_update,
    damped_pinv_solve,
    feedback_alignment,
    jacobian_at,
    row_angles,
    stability,
    system_matrix,
)
from lightning_dfc.core.dynamics import feedforward, simulate
from lightning_dfc.shell.metrics import (
    AlignmentAngle,
    Condition1,
    Condition2,
    Condition3Margin,
    Stability,
)
from lightning_dfc.core.network import LayerParams
from lightning_dfc.core.rules import bp_update
from lightning_dfc.core.losses import loss_gradient

DT = torch.float64
SIZES = [5, 7, 6, 3]


def make_params(
    sizes=SIZES, activation="tanh", bias=True, seed=0, feedback_init="xavier_normal"
) -> LayerParams:
    torch.manual_seed(seed)
    mlp = MLP(sizes, activation=activation, bias=bias)
    net = DFCNetwork(mlp, feedback_init=feedback_init).to(DT)
    p = net.params()
    if bias:  # non-zero biases, so that bias handling is exercised
        p = p._replace(biases=tuple(0.3 * torch.randn_like(b) for b in p.biases))
    return p


def with_feedback(params: LayerParams, qbar: torch.Tensor) -> LayerParams:
    sizes = [w.shape[0] for w in params.weights]
    return params._replace(feedback=tuple(torch.split(qbar, sizes, 0)))


def data(n=4, sizes=SIZES, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes[0], dtype=DT, generator=g)
    return x, torch.randint(0, sizes[-1], (n,), generator=g)


def output_with_shifts(params: LayerParams, x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """r_L for one sample when every pre-activation is shifted by its block of ``shifts``."""
    blocks = torch.split(shifts, [w.shape[0] for w in params.weights])
    h = x
    for w, b, act, s in zip(params.weights, params.biases, params.activations, blocks):
        h = act(w @ h + (0 if b is None else b) + s)
    return h


def independent_jacobian(params: LayerParams, x: torch.Tensor) -> torch.Tensor:
    """d r_L / d vbar for one sample (n_0,), via torch.func."""
    total = sum(w.shape[0] for w in params.weights)
    return jacrev(lambda s: output_with_shifts(params, x, s))(torch.zeros(total, dtype=x.dtype))


def independent_weight_jacobian(params: LayerParams, x: torch.Tensor) -> torch.Tensor:
    """d r_L / d (W_1, b_1, ..., W_L, b_L) for one sample, (n_L, P), via torch.func."""
    theta = [t for w, b in zip(params.weights, params.biases) for t in (w, b) if t is not None]

    def out(*th):
        it, h = iter(th), x
        for b, act in zip(params.biases, params.activations):
            h = next(it) @ h
            if b is not None:
                h = h + next(it)
            h = act(h)
        return h

    jacs = jacrev(out, argnums=tuple(range(len(theta))))(*theta)
    return torch.cat([j.reshape(j.shape[0], -1) for j in jacs], 1)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vec: torch.Tensor, like) -> list:
    return [c.reshape(t.shape) for c, t in zip(torch.split(vec, [t.numel() for t in like]), like)]


# ---------------------------------------------------------------------------------- Condition 1


def test_condition_1_matches_a_per_sample_loop():
    p = make_params()
    x, _ = data(6)
    ff = feedforward(p, x)
    got = condition_1(x, ff)
    assert got.shape == (6,)
    for b in range(6):
        norms = torch.stack([x[b].norm(), ff.r[0][b].norm(), ff.r[1][b].norm()])
        torch.testing.assert_close(got[b], torch.std(norms, unbiased=False) / norms.mean())
    torch.testing.assert_close(condition_1(x, ff.r), got)  # a list of rates works too


def _scaled_to_norm(w: torch.Tensor, pre: torch.Tensor, norm: float) -> torch.Tensor:
    lo, hi = 1e-3, 1e3
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if torch.tanh(mid * w @ pre).norm() < norm else (lo, mid)
    return lo * w


def test_condition_1_is_zero_for_equal_layer_norms():
    torch.manual_seed(3)
    sizes, c = [5, 8, 8, 3], 1.5
    x = torch.randn(5, dtype=DT)
    x = c * x / x.norm()
    weights, pre = [], x
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        w = _scaled_to_norm(torch.randn(n_out, n_in, dtype=DT), pre, c)
        weights.append(w)
        pre = torch.tanh(w @ pre)
    weights.append(torch.randn(3, 8, dtype=DT))  # the output's norm does not count
    acts = make_params(sizes).activations
    p = LayerParams(tuple(weights), (None,) * 3, acts, ())
    x2 = torch.stack([x, 2 * x])  # second sample: unequal norms
    value = condition_1(x2, feedforward(p, x2))
    assert value[0].item() < 1e-12
    assert value[1].item() > 0.1


# ---------------------------------------------------------------------------------- Condition 2


def test_condition_2_is_one_when_q_lies_in_the_row_space():
    p = make_params()
    x, _ = data(1)
    jac = independent_jacobian(p, x[0])
    m = torch.randn(3, 3, dtype=DT)
    got = condition_2(jacobian_at(p, x), jac.T @ m)
    assert abs(got.item() - 1.0) < 1e-10
    # a linear network: J is the same for every sample, so Q = J^T M works for the whole batch
    lin = make_params(activation="linear")
    xb, _ = data(5)
    qbar = independent_jacobian(lin, xb[0]).T @ m
    assert (condition_2(jacobian_at(lin, xb), qbar) - 1.0).abs().max().item() < 1e-10


def test_condition_2_is_zero_for_q_in_the_null_space():
    p = make_params()
    x, _ = data(1)
    jac = independent_jacobian(p, x[0])
    proj = torch.linalg.pinv(jac) @ jac
    qbar = (torch.eye(proj.shape[0], dtype=DT) - proj) @ torch.randn(proj.shape[0], 3, dtype=DT)
    assert condition_2(jacobian_at(p, x), qbar).item() < 1e-10


def test_condition_2_matches_the_projection_formula_per_sample():
    p = make_params()
    x, _ = data(4)
    qbar = torch.cat(p.feedback)
    got = condition_2(jacobian_at(p, x), qbar)
    for b in range(4):
        jac = independent_jacobian(p, x[b])
        proj = jac.T @ torch.linalg.inv(jac @ jac.T) @ jac
        torch.testing.assert_close(got[b], (proj @ qbar).norm() / qbar.norm())
    assert ((got > 0) & (got < 1)).all()
    # a rank-deficient J (dead ReLU output unit): still the projection onto row(J)
    relu = make_params(activation="relu")
    relu = relu._replace(activations=relu.activations[:-1] + (relu.activations[0],))
    xb, _ = data(3)
    jac = jacobian_at(relu, xb)
    for b in range(3):
        v = torch.linalg.svd(jac[b], full_matrices=False)
        keep = v.S > 1e-10
        q = torch.randn(jac.shape[2], 3, dtype=DT)
        want = (v.Vh[keep].T @ (v.Vh[keep] @ q)).norm() / q.norm()
        torch.testing.assert_close(condition_2(jac[b : b + 1], q)[0], want)


# ---------------------------------------------------------------------------------- Condition 3


def test_condition_3_for_known_eigenvalues():
    lin = make_params(activation="linear")
    x, _ = data(3)
    jac = jacobian_at(lin, x)
    pinv = torch.linalg.pinv(jac[0])
    # J Q = diag(0.5, 2, -0.25) -> eig(-J Q) = {-0.5, -2, 0.25}
    res = condition_3(jac, pinv @ torch.diag(torch.tensor([0.5, 2.0, -0.25], dtype=DT)), alpha=0.4)
    torch.testing.assert_close(res.max_real_neg_jq, torch.full((3,), 0.25, dtype=DT))
    torch.testing.assert_close(res.margin, torch.full((3,), 0.15, dtype=DT))
    # J Q = [[a, -b], [b, a]] (+) [c]: eig(-J Q) = -a +- ib, -c
    jq = torch.tensor([[-0.3, -2.0, 0.0], [2.0, -0.3, 0.0], [0.0, 0.0, 1.0]], dtype=DT)
    res = condition_3(jac, pinv @ jq, alpha=0.1)
    torch.testing.assert_close(res.max_real_neg_jq, torch.full((3,), 0.3, dtype=DT))
    assert (res.margin < 0).all()


# ---------------------------------------------------------------------------------- stability


def vector_field(params, x, target, alpha, k_p, tau_v, v_flat, u_int):
    """d/dt [v; u_int] of the continuous-time network + PI controller (one sample)."""
    sizes = [w.shape[0] for w in params.weights]
    vs = torch.split(v_flat, sizes)
    rates = [act(v) for act, v in zip(params.activations, vs)]
    error = target - rates[-1]
    u = u_int + k_p * error
    pres = [x, *rates[:-1]]
    dv = [
        (-v + w @ pre + b + q @ u) / tau_v
        for v, w, b, q, pre in zip(vs, params.weights, params.biases, params.feedback, pres)
    ]
    return torch.cat(dv), error - alpha * u


def test_system_matrix_is_the_jacobian_of_the_vector_field():
    p = make_params()
    x, _ = data(3)
    v = [vi + 0.2 * torch.randn_like(vi) for vi in feedforward(p, x).v]  # any point
    alpha, k_p, tau_v = 0.07, 1.3, 0.25
    got = system_matrix(p, v, alpha, k_p, tau_v)
    total = got.shape[1] - 3
    assert got.shape == (3, total + 3, total + 3)
    for b in range(3):
        target = torch.randn(3, dtype=DT)
        u_int = torch.randn(3, dtype=DT)
        def field(vv, uu):
            return torch.cat(vector_field(p, x[b], target, alpha, k_p, tau_v, vv, uu))

        jv, ju = jacrev(field, argnums=(0, 1))(torch.cat([vi[b] for vi in v]), u_int)
        torch.testing.assert_close(got[b], torch.cat([jv, ju], 1), rtol=1e-12, atol=1e-12)
    # the reference's A_PI (coordinates [(I - Jhat) dv; u]) is similar: the same eigenvalues
    ref = system_matrix(p, v, alpha, k_p, tau_v, form="reference")

    e_ref, e_got = torch.linalg.eigvals(ref), torch.linalg.eigvals(got)
    distance = (e_ref.unsqueeze(-1) - e_got.unsqueeze(-2)).abs()  # (B, n, n)
    # (repeated eigenvalues, e.g. -1/tau_v of layer 1, are only accurate to ~sqrt(machine eps))
    assert distance.amin(-1).max().item() < 1e-6 and distance.amin(-2).max().item() < 1e-6
    want = torch.linalg.eigvals(ref).real.amax(-1)
    torch.testing.assert_close(stability(p, v, alpha, k_p, tau_v), want)


@pytest.mark.parametrize("slow_gain, eps", [(0.4, 1e-6), (-0.6, 1e-9)], ids=["stable", "unstable"])
def test_stability_predicts_the_simulated_rate(slow_gain, eps):
    """The largest real eigenvalue is the log-slope of a small perturbation in ``simulate``."""
    torch.manual_seed(0)
    p = make_params([4, 6, 5, 3], feedback_init="weight_product")
    x = torch.randn(1, 4, dtype=DT)
    ff = feedforward(p, x)
    jac = independent_jacobian(p, x[0])
    # J Q = diag(slow_gain, 2, 4): a well separated slowest (or growing) mode along u_1
    gains = torch.tensor([slow_gain, 2.0, 4.0], dtype=DT)
    p = with_feedback(p, torch.linalg.pinv(jac) @ torch.diag(gains))
    cfg = SimulationConfig(dt=2e-3, steps=2001, k_p=1.5, alpha=0.1, tau_v=0.2, early_stop=False)
    predicted = stability(p, ff.v, cfg.alpha, cfg.k_p, cfg.tau_v).item()
    assert (predicted < 0) == (slow_gain > 0)
    # the feedforward state is the fixed point for target r_L^-: nudge the target by eps
    direction = torch.tensor([[1.0, 0.3, -0.2]], dtype=DT)
    result = simulate(p, x, ff, ff.r[-1] + eps * direction, cfg, record=True)
    u = result.trajectory["u"][:, 0]
    # ||du/dt|| ~ exp(lambda_max t), fitted over t in [2, 4]
    log_speed = (u[1:] - u[:-1]).norm(dim=1).log()[1000:]
    t = torch.arange(log_speed.shape[0], dtype=DT) * cfg.dt
    slope = ((t - t.mean()) * (log_speed - log_speed.mean())).sum() / ((t - t.mean()) ** 2).sum()
    assert abs(slope.item() - predicted) < 0.1 * abs(predicted), (slope.item(), predicted)


# ---------------------------------------------------------------------------------- angles


def test_angle_basics():
    a = torch.tensor([1.0, 0.0], dtype=DT)
    assert angle(a, a).item() == 0.0
    assert angle(a, torch.tensor([0.0, 2.0], dtype=DT)).item() == pytest.approx(90.0)
    assert angle(a, torch.tensor([1.0, 1.0], dtype=DT)).item() == pytest.approx(45.0)
    assert angle(a, -3 * a).item() == pytest.approx(180.0)
    assert math.isnan(angle(a, torch.zeros(2, dtype=DT)).item())
    assert angle([a, 2 * a], [2 * a, 4 * a]).item() == pytest.approx(0.0, abs=1e-6)  # concatenated
    want = math.degrees(math.acos(3 / math.sqrt(10)))
    assert angle([a, a], [a, 2 * a]).item() == pytest.approx(want)
    with pytest.raises(ValueError):
        angle(a, torch.ones(3))
    rows = row_angles(
        torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    )
    assert rows[0].item() == pytest.approx(90.0) and math.isnan(rows[1].item())


def test_bp_update_has_angle_zero_with_bp():
    p = make_params()
    x, y = data(6)
    bp = bp_update(p, x, y, "cross_entropy")
    res = alignment_angles(bp.tensors(), bp)
    assert len(res.layers) == 3
    assert all(a.item() == 0.0 for a in res.layers) and res.network.item() == 0.0
    other = [t + 0.01 * torch.randn_like(t) for t in bp.tensors()]
    res = alignment_angles(other, bp.tensors())
    assert res.network.item() > 0
    # per layer: the angle of the concatenation [W_i, b_i]
    torch.testing.assert_close(res.layers[1], angle(other[2:4], bp.tensors()[2:4]))
    with pytest.raises(ValueError):
        alignment_angles(other[:-1], bp.tensors())


# ---------------------------------------------------------------------------------- GN / MN


def gn_loop(p, x, y, loss, damping):
    """sum_b J_W,b^T (J_W,b J_W,b^T + damping I)^{-1} g_b / B, one sample at a time."""
    ff = feedforward(p, x)
    g = loss_gradient(ff.r[-1], y, loss)
    total = 0
    for b in range(x.shape[0]):
        jw = independent_weight_jacobian(p, x[b])
        if damping == 0:
            total = total + torch.linalg.pinv(jw) @ g[b]
        else:
            gram = jw @ jw.T + damping * torch.eye(jw.shape[0], dtype=DT)
            total = total + jw.T @ torch.linalg.solve(gram, g[b])
    like = [t for w, b in zip(p.weights, p.biases) for t in (w, b) if t is not None]
    return unflatten_like(total / x.shape[0], like)


@pytest.mark.parametrize("damping", [0.0, 0.1])
@pytest.mark.parametrize("bias, loss", [(True, "cross_entropy"), (False, "mse")])
def test_gauss_newton_update_matches_a_per_sample_loop(damping, bias, loss):
    p = make_params(bias=bias)
    x, labels = data(4)
    y = labels if loss == "cross_entropy" else torch.randn(4, 3, dtype=DT)
    want = gn_loop(p, x, y, loss, damping)
    for method in ("structured", "autograd"):
        got = damped_gauss_newton_update(p, x, y, loss, damping, method=method)
        assert [t.shape for t in got] == [t.shape for t in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_heavily_damped_updates_align_with_bp():
    """Sign convention: for damping -> inf, GN and linear MN -> (BP gradient) / (B damping).

    The nonlinear MN update instead tends to phi'(v_i) * (BP's dL/dv_i) r_{i-1}^T: an extra factor
    phi' in every layer but the (linear) output layer."""
    p = make_params()
    x, y = data(5)
    bp = bp_update(p, x, y, "cross_entropy").tensors()
    gn = damped_gauss_newton_update(p, x, y, "cross_entropy", 1e6)
    mn = damped_minimum_norm_update(p, x, y, "cross_entropy", 1e6, nonlinear=False)
    assert alignment_angles(gn, bp).network.item() < 1e-3
    assert alignment_angles(mn, bp).network.item() < 1e-3
    atol = 1e-4 * flat(bp).abs().max().item()
    torch.testing.assert_close(flat(gn) * 5e6, flat(bp), rtol=1e-4, atol=atol)
    torch.testing.assert_close(flat(mn) * 5e6, flat(bp), rtol=1e-4, atol=atol)
    nonlinear = damped_minimum_norm_update(p, x, y, "cross_entropy", 1e6)
    ff = feedforward(p, x)
    scaled_bp = []  # BP with dL/dv_i multiplied by phi'(v_i) once more
    jac = jacobian_at(p, x)
    g = loss_gradient(ff.r[-1], y, "cross_entropy")
    dl_dv = torch.split((jac.mT @ g.unsqueeze(-1)).squeeze(-1), [7, 6, 3], dim=1)
    for act, v, d, pre in zip(p.activations, ff.v, dl_dv, [x, *ff.r[:-1]]):
        s = act.derivative(v) * d
        scaled_bp += [s.T @ pre, s.sum(0)]
    assert alignment_angles(nonlinear, scaled_bp).network.item() < 1e-3
    assert alignment_angles(nonlinear, bp).layers[-1].item() < 1e-3


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_minimum_norm_update_matches_a_per_sample_loop(damping):
    p = make_params()
    x, y = data(4)
    ff = feedforward(p, x)
    g = loss_gradient(ff.r[-1], y, "cross_entropy")
    sizes = [w.shape[0] for w in p.weights]
    want = None
    for b in range(4):
        jac = independent_jacobian(p, x[b])
        if damping == 0:
            dv = torch.linalg.pinv(jac) @ g[b]
        else:
            dv = jac.T @ torch.linalg.solve(jac @ jac.T + damping * torch.eye(3, dtype=DT), g[b])
        terms = []
        for act, v, d, pre in zip(p.activations, ff.v, torch.split(dv, sizes), [x, *ff.r[:-1]]):
            diff = act(v[b] + d) - act(v[b])
            terms += [torch.outer(diff, pre[b]), diff]
        want = terms if want is None else [s + t for s, t in zip(want, terms)]
    got = damped_minimum_norm_update(p, x, y, "cross_entropy", damping)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b / 4, rtol=1e-8, atol=1e-12)


def test_minimum_norm_dv_is_the_pseudoinverse_for_a_linear_network():
    p = make_params(activation="linear", bias=False)
    x, _ = data(1)
    target = torch.randn(1, 3, dtype=DT)
    jac = independent_jacobian(p, x[0])
    g = loss_gradient(feedforward(p, x).r[-1], target, "mse")
    dv = torch.linalg.pinv(jac) @ g[0]
    torch.testing.assert_close(damped_pinv_solve(jacobian_at(p, x), g, 0.0)[0], dv)
    got = damped_minimum_norm_update(p, x, target, "mse", 0.0)
    pres = [x[0], *[r[0] for r in feedforward(p, x).r[:-1]]]
    for w, d, pre in zip(got, torch.split(dv, [7, 6, 3]), pres):
        torch.testing.assert_close(w, torch.outer(d, pre))
    # linear network, no biases, one sample: J_W J_W^T = sum_i ||r_{i-1}||^2 J_i J_i^T
    gn = damped_gauss_newton_update(p, x, target, "mse", 0.0)
    jw = independent_weight_jacobian(p, x[0])
    torch.testing.assert_close(flat(gn), torch.linalg.pinv(jw) @ g[0])


# ---------------------------------------------------------------------------------- feedback


def test_feedback_alignment():
    p = make_params()
    x, _ = data(1)
    jac = independent_jacobian(p, x[0])
    jb = jacobian_at(p, x)
    res = feedback_alignment(jb, jac.T)
    assert res.transpose.item() < 1e-6
    res = feedback_alignment(jb, torch.linalg.pinv(jac))
    assert res.pseudoinverse.item() < 1e-6
    damped = jac.T @ torch.linalg.inv(jac @ jac.T + 0.3 * torch.eye(3, dtype=DT))
    assert feedback_alignment(jb, damped, damping=0.3).pseudoinverse.item() < 1e-6
    assert feedback_alignment(jb, damped, damping=0.0).pseudoinverse.item() > 1e-3
    # a batch: the mean of per-sample angles
    xb, _ = data(4)
    qbar = torch.cat(p.feedback)
    per = feedback_alignment(jacobian_at(p, xb), qbar, 0.1, reduction="none")
    assert per.transpose.shape == (4,)
    want = [angle(qbar, independent_jacobian(p, xb[b]).T) for b in range(4)]
    torch.testing.assert_close(per.transpose, torch.stack(want))
    mean = feedback_alignment(jacobian_at(p, xb), qbar, 0.1)
    torch.testing.assert_close(mean.transpose, per.transpose.mean())


# ---------------------------------------------------------------------------------- metrics


def _check_sum_count_states(metric):
    assert metric.full_state_update is False
    for name in ("sum", "count"):
        assert metric._reductions[name] is not None
        stacked = torch.stack([torch.tensor(1.0), torch.tensor(2.0)])
        assert metric._reductions[name](stacked).item() == 3.0  # dist_reduce_fx="sum"


def test_metrics_accumulate_exact_means_and_reset():
    p = make_params()
    x, y = data(9)
    ff = feedforward(p, x)
    qbar = torch.cat(p.feedback)
    jac = jacobian_at(p, x)
    chunks = [slice(0, 2), slice(2, 7), slice(7, 9)]  # unequal batch sizes

    flipped = with_feedback(p, -qbar)
    alpha = condition_3(jac, -qbar, 0.0).max_real_neg_jq.median().item() + 1e-3  # 5 of 9 satisfy it
    c1, c2, c3 = Condition1(), Condition2(), Condition3Margin(alpha=alpha)
    st = Stability.from_config(SimulationConfig(alpha=0.05, k_p=1.0, tau_v=0.2))
    for s in chunks:
        c1.update(x[s], feedforward(p, x[s]))
        c2.update(p, x[s])
        c3.update(flipped, jacobian=jac[s])
        st.update(p, [v[s] for v in ff.v])
    torch.testing.assert_close(c1.compute(), condition_1(x, ff).mean())
    torch.testing.assert_close(c2.compute(), condition_2(jac, qbar).mean())
    cond3 = condition_3(jac, -qbar, alpha)
    out = c3.compute()
    torch.testing.assert_close(out["margin"], cond3.margin.mean())
    torch.testing.assert_close(out["fraction"], (cond3.margin > 0).to(DT).mean())
    torch.testing.assert_close(st.compute(), stability(p, ff.v, 0.05, 1.0, 0.2).mean())
    assert 0 < out["fraction"].item() < 1

    c2.reset()
    c2.update(p, v=[v[:3] for v in ff.v])
    torch.testing.assert_close(c2.compute(), condition_2(jac[:3], qbar).mean())
    st.reset()
    st.update(p, x=x[:2])
    want = stability(p, [v[:2] for v in ff.v], 0.05, 1.0, 0.2).mean()
    torch.testing.assert_close(st.compute(), want)

    for m in (c1, c2, c3, st):
        _check_sum_count_states(m)
    assert Condition1.higher_is_better is False and Condition2.higher_is_better is True
    assert Condition3Margin.higher_is_better is True and Stability.higher_is_better is False


def test_alignment_angle_metric():
    p = make_params()
    x, y = data(4)
    bp = bp_update(p, x, y, "cross_entropy").tensors()
    gn = damped_gauss_newton_update(p, x, y, "cross_entropy", 0.1)
    metric = AlignmentAngle()
    metric.update(gn, bp)
    metric.update(bp, bp)
    metric.update([torch.zeros(3)], [torch.ones(3)])  # NaN: skipped
    per = feedback_alignment(jacobian_at(p, x), torch.cat(p.feedback), reduction="none").transpose
    metric.update(per)
    want = torch.cat([angle(gn, bp).reshape(1), torch.zeros(1, dtype=DT), per]).mean()
    torch.testing.assert_close(metric.compute(), want)
    assert metric.skipped.item() == 1.0
    metric.reset()
    assert metric.count.item() == 0.0
    _check_sum_count_states(metric)
    assert AlignmentAngle.higher_is_better is False
