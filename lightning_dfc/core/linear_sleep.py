"""DFC's sleep phase linearised around the feedforward state and reduced to the output's
dimensions: the fast numerics' ``linear_sleep`` lever.

In the sleep phase the controller holds the output at its noise-free feedforward value while
small noise drives the apical compartments, so the network stays next to its feedforward state,
where it is linear. With D_i = phi_i'(v^-_i) and b = dt / tau_v, the voltage deviations follow

    dv_i[t+1] = (1 - b) dv_i[t] + b (W_i D_{i-1} dv_{i-1}[t'] + Q_i c[t+1] + eta_i[t+1])

(t' = t, or t + 1 with instantaneous transmission; c the apical compartment's filtered control,
eta_i its filtered noise). The controller sees only the output, and the output sees layer i only
through J_i = d r_L / d v_i (n_L, n_i), J_L = D_L, J_{i-1} = J_i W_i D_{i-1}. So p_i = J_i dv_i
obeys the same recursion in n_L dimensions, exactly:

    p_i[t+1] = (1 - b) p_i[t] + b (p_{i-1}[t'] + J_i Q_i c[t+1] + J_i eta_i[t+1]),  dr_L = p_L.

The noise reaches the output through V_i^T eta_i, with J_i^T = V_i R_i (V_i: n_i x k orthonormal,
k = min(n_i, n_L)): that k-dimensional projection is drawn step by step. The feedback rule's
sum_t eta_i[t] u[t+1]^T splits into the projected part, accumulated step by step, and the part
orthogonal to V_i, which is independent of the controls: given them it is the matrix Gaussian
(I - V V^T) Z F^T, F F^T = H = sum_j h[j] h[j]^T, h the controls filtered backwards with the noise
filter's decay, drawn once per batch. Per step this costs O(B L n_L^2) instead of
O(B sum_i n_i n_{i-1}) and B S noise draws; the linearisation's error is of second order in the
deviations (``tests/core/test_linear_sleep.py`` measures it against the full simulation).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .dynamics import feedforward, noise_scales
from .noise import standard_noise

__all__ = ["LinearSleep", "linear_sleep_applies", "linear_sleep", "simulate_sleep_linear"]


# the reduced system pays n_L feedforward passes for its Jacobians where the full simulation
# pays T - 1: used up to n_L = (T - 1) / 4 (MNIST's sleep: 10 <= 47 / 4 = 11.75; 2x faster there)
MAX_OUTPUT_SHARE = 0.25


class LinearSleep(NamedTuple):
    """The linearised sleep simulation's results.

    Attributes:
        feedback_sum: sum_t sum_b v^A[t] u[t+1]^T, (S, n_L), S = sum_i n_i (the rule's sum,
            as :func:`~lightning_dfc.core.dynamics.simulate` accumulates it).
        u: the last control, (B, n_L).
        output_deviation: r_L - r^-_L at the last step, (B, n_L).
        finite: every number stayed finite.
    """

    feedback_sum: Tensor
    u: Tensor
    output_deviation: Tensor
    finite: bool


class _Reduced(NamedTuple):
    """The sleep dynamics reduced to the output's dimensions, per sample.

    Attributes:
        bases: V_i per layer, (B, n_i, k_i), orthonormal columns spanning J_i's row space.
        apical_t: (B, n_L, n_L L): b (J_i Q_i)[m, j] at [j, m L + i], the apical drive of p from c.
        noise_t: (B, K, n_L L), K = sum_i k_i: b s_i (J_i V_i)[m, k] at [K_i + k, m L + i].
    """

    bases: list[Tensor]
    apical_t: Tensor
    noise_t: Tensor


def linear_sleep_applies(cfg, highpass_rate: float | None, holds_output: bool, output_width: int) -> str | None:
    """``None`` when the linearised sleep simulates this phase; otherwise why not (the full
    simulation runs): it covers DFC's sleep phase with white apical noise and the plain
    control, for an output narrow enough that the reduced system is the cheaper one (its
    Jacobians cost n_L feedforward passes, the full simulation T - 1). ``cfg``: levers resolved."""
    if not cfg.linear_sleep:
        return "linear_sleep off"
    if not holds_output:
        return "the controller drives the output to a target (Strong-DFC): the deviations are not small"
    if cfg.tau_noise is not None:
        return "low-pass filtered noise (tau_noise)"
    if highpass_rate is not None:
        return "a high-pass filtered control (tau_f)"
    if cfg.steps < 3:
        return "fewer than 3 time points"
    if MAX_OUTPUT_SHARE * (cfg.steps - 1) < output_width:
        return (f"a wide output (n_L = {output_width} > {MAX_OUTPUT_SHARE} (T - 1) = {MAX_OUTPUT_SHARE * (cfg.steps - 1):g}):"
                " the full simulation is the cheaper one")
    return None


def _jacobians(params, v_ff: list[Tensor]) -> list[Tensor]:
    """J_i = d r_L / d v_i for every layer, each (B, n_L, n_i)."""
    acts = params.activations
    jac = torch.diag_embed(acts[-1].derivative(v_ff[-1]))
    jacs = [jac]
    for i in range(params.num_layers - 1, 0, -1):
        batch, n_out, n_i = jac.shape
        jac = (jac.reshape(batch * n_out, n_i) @ params.weights[i]).view(batch, n_out, -1)
        jac.mul_(acts[i - 1].derivative(v_ff[i - 1]).unsqueeze(1))
        jacs.append(jac)
    return jacs[::-1]


def _row_basis(jac: Tensor) -> tuple[Tensor, Tensor]:
    """(V, J V) for J (B, n_L, n_i): V (B, n_i, k) orthonormal columns spanning J's rows and
    J V (B, n_L, k), so that J = (J V) V^T. Cholesky of J J^T = C C^T (V = J^T C^-T, J V = C)
    where J has full row rank; a QR of J^T (k = min(n_L, n_i)) where it does not."""
    if jac.shape[1] <= jac.shape[2]:
        chol, info = torch.linalg.cholesky_ex(torch.bmm(jac, jac.transpose(1, 2)))
        if not bool(info.any()):
            # C^-1 first, then one tall bmm: solves against J itself are slow
            eye = torch.eye(chol.shape[1], dtype=chol.dtype, device=chol.device).expand_as(chol)
            inverse = torch.linalg.solve_triangular(chol, eye, upper=False)
            return torch.bmm(jac.transpose(1, 2), inverse.transpose(1, 2)), chol
    basis, r = torch.linalg.qr(jac.transpose(1, 2))
    return basis, r.transpose(1, 2)


def _reduce(params, ff, cfg) -> _Reduced:
    """J_i, their row bases and the per-step drive maps of the reduced system (:class:`_Reduced`)."""
    b, scales, n_layers = cfg.dt / cfg.tau_v, noise_scales(cfg, params.num_layers), params.num_layers
    bases, apical, noise_blocks = [], [], []
    for i, jac in enumerate(_jacobians(params, list(ff.v))):
        batch, n_out, n_i = jac.shape
        basis, jv = _row_basis(jac)
        bases.append(basis)
        apical.append((jac.reshape(batch * n_out, n_i) @ params.feedback[i]).view(batch, n_out, n_out))
        noise_blocks.append(jv * (b * scales[i]))
    # columns m L + i: p is kept as (B n_L, L), every layer's p of one output unit side by side
    apical_t = torch.stack(apical, 3).mul_(b).transpose(1, 2).reshape(batch, n_out, n_out * n_layers)
    widths = [block.shape[2] for block in noise_blocks]
    noise_t = noise_blocks[0].new_zeros(batch, sum(widths), n_out, n_layers)
    start = 0
    for i, block in enumerate(noise_blocks):
        noise_t[:, start:start + widths[i], :, i] = block.transpose(1, 2)
        start += widths[i]
    return _Reduced(bases, apical_t, noise_t.view(batch, -1, n_out * n_layers))


def _filter_matrix(length: int, decay: float, dtype, device) -> Tensor:
    """M (length, length), M[t, j] = decay^(t - j) for j <= t, else 0: the causal filter
    x[t] = decay x[t - 1] + input[t] along time as one GEMM, x = M input."""
    idx = torch.arange(length, device=device)
    lag = (idx.unsqueeze(1) - idx.unsqueeze(0)).to(dtype)
    return torch.where(lag >= 0, torch.full_like(lag, decay).pow(lag.clamp_min(0)), torch.zeros_like(lag))


def linear_sleep(params, ff, cfg, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> LinearSleep:
    """Simulate the sleep phase linearised and reduced (module docstring).

    Args:
        params: :class:`~lightning_dfc.core.network.LayerParams` in the simulation's dtype.
        ff: the feedforward pass (:class:`~lightning_dfc.core.dynamics.Feedforward`), same dtype.
        cfg: the sleep :class:`~lightning_dfc.core.config.SimulationConfig` (levers resolved,
            :func:`linear_sleep_applies` ``None``).
        generator: the noise's generator.
        noise: explicit standard increments xi (T - 1, B, S) instead of drawn ones (the noise
            the full simulation would add, for verification): the projected noise is V^T xi and
            the orthogonal part is formed from xi itself.
    """
    reduced = _reduce(params, ff, cfg)
    dtype, device = reduced.noise_t.dtype, reduced.noise_t.device
    steps, decay = cfg.steps - 1, 1.0 - cfg.apical_rate
    batch, n_out = ff.v[-1].shape
    xis = None if noise is None else torch.split(noise.to(dtype), [w.shape[0] for w in params.weights], dim=2)
    if xis is None:
        increments = standard_noise((steps, batch, reduced.noise_t.shape[1]), cfg.noise, dtype, device, generator)
    else:  # V_i^T xi_i, (T - 1, B, K)
        increments = torch.cat([torch.einsum("bnk,tbn->tbk", v, xi) for v, xi in zip(reduced.bases, xis)], 2)
    # the projected filtered noise after each step's increment, rho[t] = decay rho[t - 1] + increment[t]
    rho = (_filter_matrix(steps, decay, dtype, device) @ increments.view(steps, -1)).view(steps, batch, -1)
    noise_drive = torch.bmm(rho.transpose(0, 1), reduced.noise_t).transpose(0, 1).contiguous()
    controls, filtered, p = _control_loop(reduced.apical_t, noise_drive, cfg, params.num_layers)
    if not bool(torch.isfinite(controls).all()):  # the loop ran away (an unstable controller): no sum to form
        width = sum(w.shape[0] for w in params.weights)
        nan = torch.full((width, n_out), float("nan"), dtype=dtype, device=device)
        return LinearSleep(nan, controls[-1], p[:, -1].reshape(batch, n_out).clone(), False)
    # the rule's pairs (v^A[t], u[t + 1]): v^A before step t's update, i.e. the values after step t - 1
    control_sum = filtered[:-1].reshape(-1, n_out).T @ controls[1:].reshape(-1, n_out)
    rho_sum = torch.bmm(rho[:-1].permute(1, 2, 0), controls[1:].transpose(0, 1))  # (B, K, n_L)
    backward = _backward_filtered(controls, decay)
    noise_sum = _noise_sum(reduced.bases, rho_sum, backward, noise_scales(cfg, params.num_layers), cfg, generator,
                           None if xis is None else [xi[: backward.shape[0]] for xi in xis])
    feedback_sum = noise_sum + torch.cat(params.feedback, 0) @ control_sum
    u = controls[-1]
    finite = bool(torch.isfinite(feedback_sum).all()) and bool(torch.isfinite(u).all())
    return LinearSleep(feedback_sum, u, p[:, -1].reshape(batch, n_out).clone(), finite)


def simulate_sleep_linear(params, x: Tensor, cfg, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """DFC's sleep phase on the batch ``x`` (B, n_0) in ``cfg.dtype`` (the levers resolved):
    the feedback rule's sum (S, n_L) in ``x``'s dtype and the simulation's statistics, as
    :func:`~lightning_dfc.core.rules.feedback_update` reports them (``state_ratio`` from the
    output's deviation, the only deviation the reduced system keeps)."""
    dtype = getattr(torch, cfg.dtype)
    params = params.to_dtype(dtype)
    ff = feedforward(params, x.to(dtype))
    result = linear_sleep(params, ff, cfg, generator)
    deviation = torch.linalg.vector_norm(result.output_deviation.double(), dim=1)
    ratio = deviation / (torch.linalg.vector_norm(ff.r[-1].double(), dim=1) + 1.0)
    stats = {"steps": float(cfg.steps - 1), "finite": float(result.finite),
             "control_norm": float(torch.linalg.vector_norm(result.u, dim=1).mean()),
             "state_ratio": float(ratio.max()), "error_ratio": 0.0}
    return result.feedback_sum.to(x.dtype), stats


def _control_loop(apical_t: Tensor, noise_drive: Tensor, cfg, num_layers: int) -> tuple[Tensor, Tensor, Tensor]:
    """The reduced closed loop, step by step.

    Args:
        apical_t: (B, n_L, n_L L), b J_i Q_i interleaved (:class:`_Reduced`).
        noise_drive: (T - 1, B, n_L L), b s_i J_i eta_i[t + 1] at every step, same layout.

    Returns:
        (u[t + 1] (T - 1, B, n_L), c[t + 1] (T - 1, B, n_L), the last p (B n_L, L)).
    """
    steps, batch, width = noise_drive.shape
    n_out, dt, b, a = apical_t.shape[1], cfg.dt, cfg.dt / cfg.tau_v, cfg.apical_rate
    kw = dict(dtype=apical_t.dtype, device=apical_t.device)
    if cfg.inst_transmission:  # p_i <- (1 - b) p_i + b (d_i + p_{i-1}(new)): x = (1 - b) p + b d, p = x M^T
        cascade = _filter_matrix(num_layers, b, **kw).T
    else:  # p_i <- (1 - b) p_i + b (d_i + p_{i-1}(old)): p = b d + p A^T
        cascade = torch.diag(torch.full((num_layers,), 1 - b, **kw)) + torch.diag(torch.full((num_layers - 1,), b, **kw), -1)
        cascade = cascade.T
    controls, filtered = torch.empty(steps, batch, n_out, **kw), torch.empty(steps, batch, n_out, **kw)
    p = torch.zeros(batch * n_out, num_layers, **kw)
    u, u_int, c = (torch.zeros(batch, n_out, **kw) for _ in range(3))
    noise_drive = noise_drive.unsqueeze(2)
    for t in range(steps):
        deviation = p[:, -1].view(batch, n_out)  # the output's, r_L - r^-_L: the error is its negative
        if cfg.k_p > 0:  # as simulate: the leak on the total u
            u_int.sub_(deviation, alpha=dt).add_(u, alpha=-cfg.alpha * dt)
            u_new = torch.sub(u_int, deviation, alpha=cfg.k_p, out=controls[t])
        else:
            u_new = torch.sub(u, deviation + cfg.alpha * u, alpha=dt, out=controls[t])
        c = torch.lerp(c, u_new if cfg.proactive else u, a, out=filtered[t])
        drive = torch.baddbmm(noise_drive[t], c.unsqueeze(1), apical_t).view(batch * n_out, num_layers)
        if cfg.inst_transmission:
            p = torch.add(drive, p, alpha=1 - b) @ cascade
        else:
            p = torch.addmm(drive, p, cascade)
        u = u_new
    return controls, filtered, p


def _backward_filtered(controls: Tensor, decay: float) -> Tensor:
    """h[j] = sum_{t > j} decay^(t - 1 - j) u[t + 1], j = 0..T - 3, from u[t + 1] = ``controls[t]``
    (T - 1, B, n_L): the weight of the noise drawn at step j in sum_t eta[t] u[t + 1]^T. (T - 2, B, n_L)."""
    steps = controls.shape[0]
    future = _filter_matrix(steps - 1, decay, controls.dtype, controls.device).T  # [j, t'] = decay^(t' - j)
    return (future @ controls[1:].reshape(steps - 1, -1)).view(steps - 1, *controls.shape[1:])


def _noise_sum(bases, rho_sum, backward, scales, cfg, generator, xis) -> Tensor:
    """sum_b s_i [V_b rho_sum_b + (I - V_b V_b^T) X_b] per layer, stacked (S, n_L): X_b =
    sum_j xi_b[j] h_b[j]^T, from ``xis`` (explicit noise, (T - 2, B, n_i) per layer) or drawn
    given the controls as Z_b F_b^T (:func:`_control_factor`)."""
    batch, n_out = rho_sum.shape[0], rho_sum.shape[2]
    factor_t = None if xis is not None else _control_factor(backward).transpose(1, 2)  # F_b^T, (B, n_L, n_L)
    blocks, start = [], 0
    for i, basis in enumerate(bases):
        n_i, width = basis.shape[1], basis.shape[2]
        basis_t = basis.transpose(1, 2)
        if xis is None:
            draws = standard_noise((batch, n_i, n_out), cfg.noise, rho_sum.dtype, rho_sum.device, generator)  # Z_b
            projected = torch.bmm(torch.bmm(basis_t, draws), factor_t)  # V_b^T X_b
        else:
            x_b = torch.einsum("jbn,jbm->bnm", xis[i], backward)
            projected = torch.bmm(basis_t, x_b)
        lifted = torch.bmm(basis, rho_sum[:, start:start + width] - projected)  # V_b (rho_sum_b - V_b^T X_b)
        per_sample = torch.baddbmm(lifted, draws, factor_t) if xis is None else lifted.add_(x_b)
        blocks.append(per_sample.sum(0) * scales[i])
        start += width
    return torch.cat(blocks, 0)


def _control_factor(backward: Tensor) -> Tensor:
    """F_b with F_b F_b^T = H_b = sum_j h_b[j] h_b[j]^T (B, n_L, n_L), so that Z_b F_b^T with
    standard Z_b has the conditional covariance of sum_j xi_b[j] h_b[j]^T: Cholesky, or the
    symmetric square root where H_b is singular."""
    wide = backward.double()  # (float32 squares of a runaway control overflow)
    gram = torch.bmm(wide.permute(1, 2, 0), wide.transpose(0, 1))
    factor, info = torch.linalg.cholesky_ex(gram)
    bad = info != 0
    if bool(bad.any()):
        values, vectors = torch.linalg.eigh(gram[bad])
        factor[bad] = vectors * values.clamp_min(0.0).sqrt().unsqueeze(1)
    return factor.to(backward.dtype)
