"""The Strong-DFC control loss H = ||Qbar u_ss||^2 (lightning_dfc.core.control_loss) against the theory.

Independent checks: the fixed point against long noise-free simulations, the closed-form dH/dW
against central finite differences of H re-solved at perturbed weights, and the alignment claim
(col(Qbar) in row(J), alpha -> 0: the local rule descends H).
"""

import math

import pytest
import torch

from lightning_dfc import MLP, DFCNetwork, SimulationConfig
from lightning_dfc.core.control_loss import (
    control_loss,
    control_loss_gradient,
    condition_2_at_steady_state,
    controlled_steady_state,
    h_update_angle,
    steady_state_update,
)
from lightning_dfc.core.dynamics import feedforward, output_jacobian, simulate
from lightning_dfc.core.network import LayerParams

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread", "exact_numerics")  # small tensors; the exact numerics


def make_params(sizes, activation="tanh", seed=0, feedback_init="weight_product", bias=True) -> LayerParams:
    torch.manual_seed(seed)
    net = DFCNetwork(MLP(sizes, activation=activation, bias=bias), feedback_init=feedback_init).to(DT)
    # clone: the tests perturb the tensors in place
    p = net.params()
    return p._replace(
        weights=tuple(w.clone() for w in p.weights),
        biases=tuple(None if b is None else b.clone() for b in p.biases),
        feedback=tuple(q.clone() for q in p.feedback),
    )


def with_qbar(params: LayerParams, qbar: torch.Tensor) -> LayerParams:
    return params._replace(feedback=tuple(torch.split(qbar, [w.shape[0] for w in params.weights])))


def labels(batch: int, n_out: int, error: str) -> torch.Tensor:
    """One-hot labels (mse) or soft labels 0.9 / rest (cross_entropy)."""
    onehot = torch.nn.functional.one_hot(torch.arange(batch) % n_out, n_out).to(DT)
    return onehot if error == "mse" else 0.9 * onehot + 0.1 / n_out


def data(batch: int, n_in: int, n_out: int, error: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_in, dtype=DT, generator=gen), labels(batch, n_out, error)


def fixed_point_residual(params, x, steady, target, alpha, error) -> float:
    """max over samples and layers of the violation of the fixed-point equations (recomputed here)."""
    worst = 0.0
    pre = x
    for w, b, act, q, v, r in zip(params.weights, params.biases, params.activations, params.feedback,
                                  steady.v, steady.r):
        expected = pre @ w.T + (0 if b is None else b) + steady.u @ q.T
        worst = max(worst, float((v - expected).abs().max()), float((r - act(v)).abs().max()))
        pre = r
    out = steady.r[-1] if error == "mse" else torch.softmax(steady.r[-1], dim=1)
    return max(worst, float(((target - out) - alpha * steady.u).abs().max()))


# --------------------------------------------------------------------------------------------
# the fixed point


@pytest.mark.parametrize(
    "error, alpha, k_p, dt, tau_v",
    [("mse", 0.01, 0.0, 0.02, 0.05), ("mse", 0.01, 0.5, 0.02, 0.05), ("cross_entropy", 0.1, 0.0, 0.05, 0.1)],
)
def test_newton_solves_fixed_point_and_matches_simulation(error, alpha, k_p, dt, tau_v):
    params = make_params([4, 6, 5, 3])
    x, target = data(4, 4, 3, error)
    steady = controlled_steady_state(params, x, target, alpha, error)
    assert bool(steady.converged.all()) and steady.num_not_converged == 0
    assert fixed_point_residual(params, x, steady, target, alpha, error) < 1e-10
    assert int(steady.iterations.max()) <= 10

    # the simulated (noise-free) dynamics settle on the same state; the leak acts on the total u,
    # so the fixed point does not depend on k_p
    cfg = SimulationConfig(dt=dt, steps=8000, k_p=k_p, alpha=alpha, tau_v=tau_v, early_stop=True,
                           tolerance=1e-12)
    result = simulate(params, x, feedforward(params, x), target, cfg,
                      output_error="linear" if error == "mse" else "softmax")
    assert result.steps_simulated < cfg.steps - 1  # it settled
    scale = float(steady.u.abs().max())
    assert float((result.u - steady.u).abs().max()) < 1e-8 * scale
    for v_sim, v_newton in zip(result.v, steady.v):
        assert torch.allclose(v_sim, v_newton, rtol=0, atol=1e-8)


def test_zero_loss_gives_zero_control_and_gradient():
    params = make_params([4, 6, 5, 3], feedback_init="xavier_normal")
    x, _ = data(5, 4, 3, "mse")
    out = feedforward(params, x).r[-1]
    for error, target in (("mse", out.clone()), ("cross_entropy", torch.softmax(out, dim=1))):
        steady = controlled_steady_state(params, x, target, 0.01, error)
        assert bool(steady.converged.all())
        assert float(steady.u.abs().max()) < 1e-14
        assert float(control_loss(params, steady.u).abs().max()) < 1e-26
        grad = control_loss_gradient(params, x, steady, 0.01, error)
        assert max(float(t.abs().max()) for t in grad.tensors()) < 1e-13
        update = steady_state_update(params, x, steady)
        assert max(float(t.abs().max()) for t in update.tensors()) < 1e-13


def test_non_convergence_is_reported_and_masked():
    params = make_params([4, 6, 5, 3])
    x, target = data(4, 4, 3, "mse")
    x[2, 1] = math.nan  # this sample can never converge
    with pytest.warns(RuntimeWarning, match="1 of 4 samples did not converge"):
        steady = controlled_steady_state(params, x, target, 0.01)
    assert steady.converged.tolist() == [True, True, False, True]
    assert steady.num_not_converged == 1
    with pytest.raises(RuntimeError, match="did not converge"):
        controlled_steady_state(params, x, target, 0.01, on_failure="raise")
    # the gradient averages over the converged samples only (the default mask)
    grad = control_loss_gradient(params, x, steady, 0.01)
    keep = torch.tensor([0, 1, 3])
    clean = controlled_steady_state(params, x[keep], target[keep], 0.01)
    reference = control_loss_gradient(params, x[keep], clean, 0.01)
    for a, b in zip(grad.tensors(), reference.tensors()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    # an iteration cap too small is reported, not silent
    with pytest.warns(RuntimeWarning, match="did not converge within 1 Newton"):
        capped = controlled_steady_state(params, x[keep], target[keep], 0.01, max_iter=1)
    assert capped.num_not_converged > 0


# --------------------------------------------------------------------------------------------
# H and its gradient


def test_control_loss_reductions():
    params = make_params([4, 6, 5, 3])
    x, target = data(4, 4, 3, "mse")
    steady = controlled_steady_state(params, x, target, 0.01)
    qbar = torch.cat(params.feedback)
    per_sample = torch.stack([qbar @ u for u in steady.u]).pow(2).sum(1)
    assert torch.allclose(control_loss(params, steady.u), per_sample, rtol=1e-13)
    assert torch.allclose(control_loss(params, steady.u, "mean"), per_sample.mean(), rtol=1e-13)
    # the authors' logged value: sum_b ||Q u_b||^2 / (B * number of neurons)
    assert torch.allclose(control_loss(params, steady.u, "reference"), per_sample.sum() / (4 * (6 + 5 + 3)),
                          rtol=1e-13)


@pytest.mark.parametrize("error", ["mse", "cross_entropy"])
def test_gradient_matches_finite_differences(error):
    params = make_params([3, 4, 3, 2], feedback_init="xavier_normal")
    x, target = data(3, 3, 2, error, seed=2)
    alpha = 0.05
    steady = controlled_steady_state(params, x, target, alpha, error)
    grad = control_loss_gradient(params, x, steady, alpha, error)

    def h_at() -> float:
        # re-solve the fixed point at the perturbed weights (warm start from the unperturbed u)
        s = controlled_steady_state(params, x, target, alpha, error, u0=steady.u, on_failure="raise")
        return float(control_loss(params, s.u, "mean"))

    step = 1e-6
    numeric = []
    tensors = [t for w, b in zip(params.weights, params.biases) for t in (w, b)]
    for tensor in tensors:
        flat, g = tensor.view(-1), torch.zeros(tensor.numel(), dtype=DT)
        for k in range(flat.numel()):
            orig = float(flat[k])
            flat[k] = orig + step
            plus = h_at()
            flat[k] = orig - step
            minus = h_at()
            flat[k] = orig
            g[k] = (plus - minus) / (2 * step)
        numeric.append(g)
    analytic = torch.cat([t.reshape(-1) for t in grad.tensors()])
    numeric = torch.cat(numeric)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-5
    assert [t.shape for t in grad.tensors()] == [t.shape for t in tensors]


def test_authors_formula_is_the_mse_case():
    """For mse, dH/dtheta = 2 x the authors' 1/2 dH/dtheta = -u^T Q^T Q (J Q + alpha I)^{-1} J R^T."""
    params = make_params([4, 6, 5, 3], feedback_init="xavier_normal")
    x, target = data(3, 4, 3, "mse")
    alpha = 0.02
    steady = controlled_steady_state(params, x, target, alpha)
    grad = control_loss_gradient(params, x, steady, alpha)
    qbar = torch.cat(params.feedback)
    jac = output_jacobian(params, steady.v)
    sizes = [w.shape[0] for w in params.weights]
    pres = [x, *steady.r[:-1]]
    ref_w = [torch.zeros_like(w) for w in params.weights]
    for b in range(3):  # per-sample loop, as the authors' compute_H_update
        row = -steady.u[b] @ qbar.T @ qbar @ torch.inverse(jac[b] @ qbar + alpha * torch.eye(3, dtype=DT)) @ jac[b]
        for i, block in enumerate(torch.split(row, sizes)):
            ref_w[i] += torch.outer(block, pres[i][b]) / 3
    for ours, theirs in zip(grad.weights, ref_w):
        assert torch.allclose(ours, 2 * theirs, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the local rule against -dH/dW


@pytest.mark.parametrize("alpha", [1e-4, 1e-6])
def test_local_rule_descends_h_when_q_in_row_space_of_j(alpha):
    """Linear network: J is constant, so Qbar = J^T M satisfies Condition 2 for every sample."""
    params = make_params([4, 5, 4, 3], activation="linear")
    x, target = data(6, 4, 3, "mse")
    jac = output_jacobian(params, feedforward(params, x).v)[0]
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, dtype=DT, generator=gen)
    params = with_qbar(params, jac.T @ (a @ a.T + torch.eye(3, dtype=DT)))
    steady = controlled_steady_state(params, x, target, alpha)
    assert float(condition_2_at_steady_state(params, steady.v).min()) > 1 - 1e-12
    angles = h_update_angle(steady_state_update(params, x, steady), control_loss_gradient(params, x, steady, alpha))
    assert float(angles.network) < 1e4 * alpha  # O(alpha) degrees
    assert all(float(t) < 1e4 * alpha for t in angles.layers)


def test_local_rule_descends_h_nonlinear_self_consistent_q():
    """tanh network, one sample: iterate Qbar = J(v_ss(Qbar))^T M to Condition 2 at the steady state."""
    params = make_params([4, 6, 5, 3])
    x, target = data(1, 4, 3, "mse")
    alpha = 1e-6
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, dtype=DT, generator=gen)
    mix = a @ a.T + torch.eye(3, dtype=DT)
    qbar = torch.cat(params.feedback)
    for _ in range(60):
        steady = controlled_steady_state(with_qbar(params, qbar), x, target, alpha)
        new = output_jacobian(params, steady.v)[0].T @ mix
        done = float((new - qbar).norm() / qbar.norm()) < 1e-12
        qbar = new
        if done:
            break
    params = with_qbar(params, qbar)
    steady = controlled_steady_state(params, x, target, alpha)
    assert float(condition_2_at_steady_state(params, steady.v)[0]) > 1 - 1e-9
    grad = control_loss_gradient(params, x, steady, alpha)
    angle = h_update_angle(steady_state_update(params, x, steady, "voltage_difference"), grad)
    assert float(angle.network) < 1e-2
    # the nonlinear-difference rule is only approximately Q_i u (phi(v) - phi(v^B) != phi' Q_i u)
    angle_nl = h_update_angle(steady_state_update(params, x, steady, "nonlinear_difference"), grad)
    assert float(angle_nl.network) < 10.0


def _degrees(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa, fb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return math.degrees(math.acos(float(fa @ fb / (fa.norm() * fb.norm()))))


def _condition_2_by_jacrev(params: LayerParams, v: list[torch.Tensor]) -> torch.Tensor:
    """||P Qbar||_F / ||Qbar||_F per sample with J = d r_L / d vbar from torch.func.jacrev of the
    network's output under a perturbation delta_i of every layer's voltage at the state ``v``
    (v_i + delta_i + W_i (r_{i-1}(delta) - r_{i-1})), and P = J^T (J J^T)^{-1} J."""
    from torch.func import jacrev

    acts, weights = params.activations, params.weights
    sizes = [t.shape[1] for t in v]
    qbar = torch.cat(params.feedback, 0)  # (S, n_L)
    out = []
    for b in range(v[0].shape[0]):
        base = [t[b] for t in v]

        def output(delta, base=base):
            parts = torch.split(delta, sizes)
            r_prev, r_prev_base = None, None
            for i, (act, w) in enumerate(zip(acts, weights)):
                vi = base[i] + parts[i]
                if i > 0:
                    vi = vi + w @ (r_prev - r_prev_base)
                r_prev, r_prev_base = act(vi), act(base[i])
            return r_prev

        jac = jacrev(output)(torch.zeros(sum(sizes), dtype=DT))  # (n_L, S)
        projection = jac.T @ torch.linalg.solve(jac @ jac.T, jac)
        out.append(torch.linalg.matrix_norm(projection @ qbar) / torch.linalg.matrix_norm(qbar))
    return torch.stack(out)


def test_random_feedback_angle_and_condition_2_are_the_recomputed_ones():
    """Random Qbar (Condition 2 far from holding): the reported angle between the local update and
    -dH/dW is the one recomputed from the flattened tensors, per layer and overall, and the
    steady-state Condition 2 the one recomputed from a jacrev Jacobian; both say the feedback is
    worse aligned than the weight product's."""
    x, target = data(6, 4, 3, "mse")
    found = {}
    for init in ("xavier_normal", "weight_product"):
        params = make_params([4, 6, 5, 3], feedback_init=init)
        steady = controlled_steady_state(params, x, target, 1e-3)
        grad = control_loss_gradient(params, x, steady, 1e-3)
        update = steady_state_update(params, x, steady)
        angles = h_update_angle(update, grad)
        weights_only = h_update_angle(update, grad, with_bias=False)
        assert float(angles.network) == pytest.approx(_degrees(update.tensors(), grad.tensors()), abs=1e-6)
        assert float(weights_only.network) == pytest.approx(_degrees(update.weights, grad.weights), abs=1e-6)
        for i, layer in enumerate(angles.layers):
            mine = _degrees([update.weights[i], update.biases[i]], [grad.weights[i], grad.biases[i]])
            assert float(layer) == pytest.approx(mine, abs=1e-6)
        c2 = condition_2_at_steady_state(params, steady.v)
        torch.testing.assert_close(c2, _condition_2_by_jacrev(params, list(steady.v)), rtol=1e-9, atol=1e-12)
        found[init] = float(angles.network), float(c2.mean())
    print(f"angle to -dH/dW, condition 2 at the steady state: {found}")
    assert found["xavier_normal"][0] > found["weight_product"][0] + 10
    assert found["xavier_normal"][1] < found["weight_product"][1] - 0.1


@pytest.mark.parametrize(
    "error, feedback_init, rule",
    [("mse", "weight_product", "voltage_difference"), ("cross_entropy", "weight_product", "voltage_difference"),
     ("mse", "xavier_normal", "nonlinear_difference")],
)
def test_h_decreases_along_local_updates(error, feedback_init, rule):
    """Plain gradient steps W <- W - lr * (local steady-state update) reduce the batch H."""
    params = make_params([4, 6, 5, 3], feedback_init=feedback_init)
    x, target = data(8, 4, 3, error)
    alpha, lr = (1e-3 if error == "mse" else 1e-2), 0.05
    history, u = [], None
    for _ in range(30):
        steady = controlled_steady_state(params, x, target, alpha, error, u0=u, on_failure="raise")
        u = steady.u
        history.append(float(control_loss(params, u, "mean")))
        update = steady_state_update(params, x, steady, rule)
        for p, d in zip(params.weights + params.biases, update.weights + update.biases):
            p.sub_(lr * d)
    assert history[-1] < 0.5 * history[0]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(history, history[1:]))  # monotone on this problem


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises_value_error():
    params = make_params([4, 6, 5, 3])
    x, target = data(4, 4, 3, "mse")
    with pytest.raises(ValueError, match="input x of shape"):
        controlled_steady_state(params, x[:, :3], target, 0.01)
    with pytest.raises(ValueError, match="target of shape"):
        controlled_steady_state(params, x, target[:3], 0.01)
    with pytest.raises(ValueError, match="target of shape"):
        controlled_steady_state(params, x, target[:, :2], 0.01)
    with pytest.raises(ValueError, match="unknown error type 'hinge'"):
        controlled_steady_state(params, x, target, 0.01, "hinge")
    with pytest.raises(ValueError, match="alpha"):
        controlled_steady_state(params, x, target, -0.1)
    with pytest.raises(ValueError, match="alpha must be > 0 with the cross_entropy"):
        controlled_steady_state(params, x, target, 0.0, "cross_entropy")
    with pytest.raises(ValueError, match="u0 of shape"):
        controlled_steady_state(params, x, target, 0.01, u0=target[:, :2])
    with pytest.raises(ValueError, match="max_iter"):
        controlled_steady_state(params, x, target, 0.01, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        controlled_steady_state(params, x, target, 0.01, tol=-1.0)
    steady = controlled_steady_state(params, x, target, 0.01)
    with pytest.raises(ValueError, match="u of shape"):
        control_loss(params, steady.u[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        control_loss(params, steady.u, "sum")
    with pytest.raises(ValueError, match="alpha"):
        control_loss_gradient(params, x, steady, -1.0)
    with pytest.raises(ValueError, match="unknown error type"):
        control_loss_gradient(params, x, steady, 0.01, "bce")
    with pytest.raises(ValueError, match=r"steady_state.v\[1\]"):
        control_loss_gradient(params, x, steady._replace(v=[steady.v[0], steady.v[1][:, :2], steady.v[2]]), 0.01)
    with pytest.raises(ValueError, match="input x of shape"):
        control_loss_gradient(params, x[:, :3], steady, 0.01)
    with pytest.raises(ValueError, match="steady_state.u of shape"):
        control_loss_gradient(params, x[:3], steady, 0.01)
    with pytest.raises(ValueError, match="unknown learning rule"):
        steady_state_update(params, x, steady, "hebbian")
    grad = control_loss_gradient(params, x, steady, 0.01)
    with pytest.raises(ValueError, match="different shapes"):
        h_update_angle(grad.weights[:2], grad.weights)
