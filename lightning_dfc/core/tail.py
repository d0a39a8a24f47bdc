"""The rest of a settled noise-free simulation in closed form: the early stop of the fast numerics.

A noise-free simulation approaches the controller's fixed point x*: e(r_L) = alpha u with
v_i = W_i r_{i-1} + b_i + Q_i u, the steady state of every variant of the dynamics (proactive or
not, any apical time constant), solved by Newton's method on the control (:func:`fixed_point`).
Near it the Euler step is linear, x(t + 1) - x* = A (x(t) - x*), so from a time point t0 on the
remaining N = T - 1 - t0 points sum to

    sum_{k=1..N} (x(t0 + k) - x*) = (I - A^N) A (I - A)^{-1} d,    d = x(t0) - x*,

and (I - A)^{-1} d costs two linearised sweeps through the layers and one n_L x n_L solve per
sample with the Newton matrix (:class:`LinearizedMap`: the somata and the controller are
eliminated in closed form, every mode of the dynamics included). What is left after N more
steps is the slowest mode's: (I - A)^{-1} amplifies it by 1 / (1 - rho), so z2 = (I - A)^{-2} d
gives rho_b (|z_u| / |z2_u| = 1 - rho_b, a power step) and that mode's part of d,
(1 - rho)^2 z2 (one power more, (1 - rho)^3 z3, for the rules that use the last point); A^N acts
on it as rho^N. The DFC rule's sums over the rest of the trajectory and the last point then
follow to first order in d (:class:`SettledTail`).

The simulation stops at a check whose prediction agrees with the previous check's to
``tolerance`` (relative, per tensor): of the whole update for the DFC rule, of the teaching
signals at the last time point for the rules that use it (DFC-SS, Strong-DFC two phases), which
also need that point within ``REMAINDER`` tolerances of x* (the slowest modes' remainder is only
estimated). The change between the two is scaled up to what it implies for the newer one's
error, which is second order in the distance to x*: change q / (1 - q) where that distance
squared shrank by q. Before that the simulation goes on, so a batch that never settles is simulated in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .accumulators import sample_norm
from .config import SimulationConfig
from .network import LayerParams
from .state import teaching_signal

__all__ = ["OutputError", "FixedPoint", "controlled_sweep", "control_jacobian", "newton_factors", "fixed_point",
           "Deviation", "LinearizedMap", "SettledTail", "Tail", "last_point_can_settle"]


class OutputError:
    """The controller's error e as a function of the output deviation dr_L, (B, n_L) -> (B, n_L):
    ``linear`` e = r_L* - r_L (= delta - dr_L), ``softmax`` e = r_L* - softmax(r_L)."""

    KINDS = ("linear", "softmax")

    def __init__(self, kind: str, target: Tensor | None, delta: Tensor | None, output_ff: Tensor) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown output_error {kind!r}; choose one of {self.KINDS}")
        if kind == "linear" and delta is None:
            if target is None:
                raise ValueError("simulate needs a target r_L* or its offset delta = r_L* - r_L^-")
            delta = target - output_ff
        if kind == "softmax" and target is None:
            raise ValueError("output_error='softmax' needs the target probabilities (soft labels)")
        self.kind, self.target, self.delta, self.output_ff = kind, target, delta, output_ff

    def __call__(self, dr_out: Tensor) -> Tensor:
        if self.kind == "linear":
            return self.delta - dr_out
        return self.target - _row_softmax(self.output_ff + dr_out)

    def of_state(self, state) -> Tensor:
        """e at a simulation state's output: the softmax error from its output rate directly
        (the fused states hold it; no deviation formed and added back)."""
        if self.kind == "linear":
            return self.delta - state.output_deviation()
        return self.target - _row_softmax(state.output_rate())

    def sensitivity(self, dr_out: Tensor) -> Tensor | None:
        """-de/dr_L, (B, n_L, n_L): ``None`` for the linear error (the identity), diag(p) - p p^T
        for the softmax error."""
        if self.kind == "linear":
            return None
        p = torch.softmax(self.output_ff + dr_out, dim=1)
        return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)

    def scale(self) -> Tensor:
        """A per-sample size of the target offset, (B,): what a residual is measured against."""
        offset = self.delta if self.kind == "linear" else self.target - torch.softmax(self.output_ff, dim=1)
        return sample_norm(offset)


def _row_softmax(z: Tensor) -> Tensor:
    """softmax over each row of z (B, n_L). Below float64 it runs over the columns of z^T: for a
    narrow n_L torch's CPU kernel is about 4x faster that way (5 against 20 us at 128 x 10), equal
    to rounding; float64, the published numerics, keeps torch's own row softmax."""
    if z.dtype == torch.float64:
        return torch.softmax(z, dim=1)
    return torch.softmax(z.T, dim=0).T


def controlled_sweep(params: LayerParams, ff, u: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The steady state of the somata under a constant control ``u`` (B, n_L), as deviations from
    the feedforward pass: dv_i = W_i dr_{i-1} + Q_i u (dr_0 = 0), dr_i = phi_i(v^-_i + dv_i) - r^-_i."""
    dvs, drs = [], []
    for i, act in enumerate(params.activations):
        dv = u @ params.feedback[i].T
        if i > 0:
            dv = dv.addmm_(drs[-1], params.weights[i].T)
        dvs.append(dv)
        drs.append(act.rate_deviation(ff.v[i], ff.r[i], dv))
    return dvs, drs


@dataclass
class FixedPoint:
    """The controller's fixed point: control ``u`` (B, n_L) and the deviations ``dv``, ``dr`` of
    every layer (B, n_i); ``converged``: whether Newton's method reached it for every sample;
    ``factors``: the LU factors of the Newton matrix it used."""

    u: Tensor
    dv: list[Tensor]
    dr: list[Tensor]
    converged: bool
    factors: tuple[Tensor, Tensor] | None = None  # of the Newton matrix last used (a warm start's)


def control_jacobian(params: LayerParams, v: list[Tensor], slopes: list[Tensor] | None = None) -> Tensor:
    """d r_L / d u with the somata at their steady state at voltages ``v`` (list of (B, n_i)):
    Jbar Qbar, (B, n_L, n_L), by forward mode: Z_i = phi_i'(v_i) (Q_i + W_i Z_{i-1}).
    ``slopes``: phi_i'(v_i) when already known."""
    z = None  # (n_i, n_L, B): the batch innermost, for the element-wise products
    for i, act in enumerate(params.activations):
        slope = (act.derivative(v[i]) if slopes is None else slopes[i]).T.unsqueeze(1)  # (n_i, 1, B)
        q = params.feedback[i].unsqueeze(2)  # (n_i, n_L, 1)
        if z is None:
            z = q * slope
        else:  # W_i z in one GEMM
            z = (params.weights[i] @ z.flatten(1)).view(-1, z.shape[1], z.shape[2]).add_(q).mul_(slope)
    return z.permute(2, 0, 1)


def newton_factors(params: LayerParams, ff, error: OutputError, alpha: float, dv: list[Tensor],
                   dr_out: Tensor) -> tuple[Tensor, Tensor]:
    """LU factors of -dF/du for F(u) = e(r_L(u)) - alpha u at the sweep ``dv``: S Jbar Qbar + alpha I."""
    jac = control_jacobian(params, [a + d for a, d in zip(ff.v, dv)])
    sens = error.sensitivity(dr_out)
    if sens is not None:
        jac = sens @ jac
    matrix = jac + alpha * torch.eye(jac.shape[1], dtype=jac.dtype, device=jac.device)
    return torch.linalg.lu_factor(matrix)


def fixed_point(params: LayerParams, ff, error: OutputError, alpha: float, u0: Tensor, *,
                factors: tuple[Tensor, Tensor] | None = None, max_iterations: int = 12,
                rtol: float | None = None, halvings: int = 4) -> FixedPoint:
    """Solve F(u) = e(r_L(u)) - alpha u = 0 for the control (B, n_L) by a damped Newton method
    from ``u0``, with the somata at their steady state (:func:`controlled_sweep`).

    Chord iterations: the Jacobian's ``factors`` (:func:`newton_factors`; computed at ``u0`` when
    not given) are reused while each step shrinks to less than a tenth of the previous one, and
    refreshed where it does not. A sample's step is halved until its |F| decreases (far from the
    fixed point, with strong targets, full steps can cycle), at most ``halvings`` times. A sample
    has converged when its last step moved u by at most ``rtol`` of |u| (default: 50 machine
    epsilons, the rounding floor of e near the fixed point)."""
    rtol = 50 * torch.finfo(u0.dtype).eps if rtol is None else rtol
    norm = sample_norm
    u = u0.clone()
    dv, dr = controlled_sweep(params, ff, u)
    residual = error(dr[-1]) - alpha * u
    converged, previous = False, None
    for _ in range(max_iterations):
        if factors is None:
            factors = newton_factors(params, ff, error, alpha, dv, dr[-1])
        step = torch.linalg.lu_solve(*factors, residual.unsqueeze(-1)).squeeze(-1)
        size_now = norm(residual)
        for _halving in range(halvings):  # backtracking: halve the step of the samples whose |F| grew
            trial = u + step
            dv, dr = controlled_sweep(params, ff, trial)
            trial_residual = error(dr[-1]) - alpha * trial
            worse = norm(trial_residual) > size_now
            if not bool(worse.any()):
                break
            step = torch.where(worse.unsqueeze(1), 0.5 * step, step)
        u, residual = trial, trial_residual
        size = norm(step)
        if not bool(torch.isfinite(size).all()):
            break
        if bool((size <= rtol * norm(u)).all()):
            converged = True
            break
        largest = float(size.max())
        if previous is not None and largest > 0.1 * previous:  # the chord converges slowly: refresh it
            factors = None
        previous = largest
    return FixedPoint(u, dv, dr, converged, factors)


class Deviation(NamedTuple):
    """A state of the simulation, or its deviation from the fixed point; all (B, .):
    ``integral`` the controller's integral part (``None`` with k_p = 0), ``control`` u,
    ``apical`` the apical compartment's filtered control c (``None`` when it follows Q u at once),
    ``soma`` the somatic voltage deviations per layer."""

    integral: Tensor | None
    control: Tensor
    apical: Tensor | None
    soma: list[Tensor]


class LinearizedMap:
    """The Euler step of :func:`~lightning_dfc.core.dynamics.simulate` linearised at the fixed
    point (see the module docstring), for every variant of the dynamics (proactive or not, any
    apical rate a = dt / tau_A, instantaneous transmission or not, k_p >= 0).

    With S_i = phi_i'(v*_i), the step maps a deviation (z_int, z_u, z_c, z_i) to
    z_int + dt (eps - alpha z_u) (eps = -P S_L z_L, P the error's sensitivity), the control
    z_int' + k_p eps, c' = (1 - a) c + a u_k, and z_i' = (1 - b) z_i + b (Q_i c' + W_i S_{i-1} z_{i-1}')
    (b = dt / tau_v; z_{i-1} without instantaneous transmission). :meth:`solve` eliminates the
    layers in closed form: z_i = Phi_i(w) + phi_i is affine in the apical drive w = z_u + kappa,
    and the controller's row is the n_L x n_L system (P Jbar Qbar + alpha I) z_u = ..., the
    Newton matrix at x*.
    """

    def __init__(self, params: LayerParams, ff, point: FixedPoint, error: OutputError, cfg: SimulationConfig) -> None:
        self.params, self.cfg, self.ff, self.point = params, cfg, ff, point
        self._signals: list[Tensor] | None = None
        voltages = [a + d for a, d in zip(ff.v, point.dv)]
        self.slopes = [act.derivative(v) for act, v in zip(params.activations, voltages)]
        self.basal = [None] + [dr @ w.T for dr, w in zip(point.dr[:-1], params.weights[1:])]  # W_i dr*_{i-1}
        self.basal_slopes = [None] + [act.derivative(v + d) for act, v, d in
                                      zip(params.activations[1:], ff.v[1:], self.basal[1:])]
        self.jacobian = control_jacobian(params, voltages, self.slopes)  # Jbar Qbar (B, n_L, n_L), S_L included
        sens = error.sensitivity(point.dr[-1])
        self.sensitivity = sens
        matrix = self.jacobian if sens is None else sens @ self.jacobian
        eye = torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
        self.factors = torch.linalg.lu_factor(matrix + cfg.alpha * eye)

    def signals(self, rule: str) -> list[Tensor]:
        """The teaching signals at x*, per layer (B, n_i) (computed once)."""
        if self._signals is None:
            params, ff, point = self.params, self.ff, self.point
            self._signals = [teaching_signal(rule, act, ff.v[i], point.dv[i], self.basal[i], ff.r[i])
                             for i, act in enumerate(params.activations)]
        return self._signals

    def _sweep(self, drive: Tensor | None, sources: list[Tensor]) -> list[Tensor]:
        """z_i = Q_i drive + W_i S_{i-1} z_{i-1} + sources_i (``drive`` ``None``: 0)."""
        params, out = self.params, []
        for i in range(params.num_layers):
            z = sources[i].clone() if drive is None else torch.addmm(sources[i], drive, params.feedback[i].T)
            if i > 0:
                z = z.addmm_(out[i - 1] * self.slopes[i - 1], params.weights[i].T)
            out.append(z)
        return out

    def _error(self, output: Tensor) -> Tensor:
        """P S_L z_L, the error's response to an output deviation, (B, n_L)."""
        out = self.slopes[-1] * output
        return out if self.sensitivity is None else (self.sensitivity @ out.unsqueeze(2)).squeeze(2)

    def solve(self, d: Deviation) -> Deviation:
        """(I - A)^{-1} d, i.e. z with z - A z = d."""
        cfg, a, b = self.cfg, self.cfg.apical_rate, self.cfg.dt / self.cfg.tau_v
        kappa = -d.control if cfg.proactive else torch.zeros_like(d.control)  # w = (Az)_c = z_u + kappa
        if d.apical is not None:
            kappa = kappa + d.apical * (1.0 / a - 1.0)
        # the layers' own sources: phi_i = d_i / b + W_i S_{i-1} (phi_{i-1} - d_{i-1} [instantaneous])
        sources = [dv / b for dv in d.soma]
        if cfg.inst_transmission:
            sources = [s if i == 0 else s - (d.soma[i - 1] * self.slopes[i - 1]) @ self.params.weights[i].T
                       for i, s in enumerate(sources)]
        phi = self._sweep(None, sources)
        offset = (self.jacobian @ kappa.unsqueeze(2)).squeeze(2)
        offset = offset if self.sensitivity is None else (self.sensitivity @ offset.unsqueeze(2)).squeeze(2)
        rhs = (d.integral if d.integral is not None else d.control) / cfg.dt - offset - self._error(phi[-1])
        z_u = torch.linalg.lu_solve(*self.factors, rhs.unsqueeze(2)).squeeze(2)
        w = z_u + kappa
        z = self._sweep(w, sources)  # = Phi(w) + phi
        integral = None
        if d.integral is not None:  # z_int = z_u - d_u + d_int - k_p eps
            integral = z_u - d.control + d.integral + cfg.k_p * self._error(z[-1])
        apical = None
        if d.apical is not None:  # z_c = u_k + d_c / a
            apical = (z_u - d.control if cfg.proactive else z_u) + d.apical / a
        return Deviation(integral, z_u, apical, z)


@dataclass
class Tail:
    """The closed-form rest of a simulation after its last simulated step (``remaining`` = N
    time points), per layer (B, n_i) unless noted:

    Attributes:
        point: the fixed point x*.
        signals: the teaching signals s* at x* (``None`` for rules that use the last point).
        signal_sums: sum over the N points of the signal; ``deviation_sums``: of s - s*;
            ``rate_sums``: of the rate deviation dr (from the feedforward pass).
        final_control, final_soma: the control u and the somatic deviations at the last time
            point, x* + rho^N (1 - rho)^2 z2.
        agreement: the relative change of the prediction since the previous check.
    """

    remaining: int
    point: FixedPoint
    final_control: Tensor
    final_soma: list[Tensor]
    agreement: float = float("nan")
    signals: list[Tensor] | None = None
    signal_sums: list[Tensor] | None = None
    deviation_sums: list[Tensor] | None = None
    rate_sums: list[Tensor] | None = None


def last_point_can_settle(cfg: SimulationConfig, tolerance: float) -> bool:
    """Whether a simulation with proportional control (k_p > 0) can reach its fixed point by the
    last time point, to the REMAINDER * ``tolerance`` that a rule at the last point needs.

    With the network at its steady state under the control, e = delta - G u (G = P Jbar Qbar),
    u = u_int + k_p e and u_int' = e - alpha u, the integral decays at the rates of
    (G + alpha)(I + k_p G)^{-1}, which for eigenvalues g of G with Re(1 + k_p g) > 0 lie below
    max(alpha, 1 / k_p) (the scalar (g + alpha) / (1 + k_p g) runs from alpha at g = 0 to 1 / k_p);
    the network's own lag only slows it. So at least (1 - dt max(alpha, 1 / k_p))^(T - 1) of the
    integral's initial deviation is left at the last point. Where that exceeds the remainder
    allowed, no check could stop, and the simulation runs every step without checking (if the
    bound's premise fails, this only forgoes an early stop). Without proportional control
    (k_p = 0) the rate is unbounded (alpha + g): ``True``."""
    if cfg.k_p <= 0:
        return True
    rate = cfg.dt * max(cfg.alpha, 1.0 / cfg.k_p)
    if rate >= 1:
        return True
    return (1 - rate) ** (cfg.steps - 1) <= SettledTail.REMAINDER * tolerance


class SettledTail:
    """The fast numerics' early stop: every ``check_every`` steps, whether the rest of the
    simulation can be added in closed form (:class:`Tail`), within ``tolerance``.

    Args:
        params, ff: the network and its feedforward pass.
        error: the controller's output error.
        cfg: the simulation (its dynamics, ``steps``, ``check_every``, ``tolerance``).
        sums: the DFC rule's running sums (:class:`~lightning_dfc.core.accumulators.ForwardSums`)
            when the rule averages the trajectory; ``None`` for rules that use its last point.
        rule: the teaching signal (``nonlinear_difference`` or ``voltage_difference``).
        keep: (B, 1) samples that count (``None``: all).
        x: the input (B, n_0) (layer 1's presynaptic rate, for the predicted update).
        classification: ``(threshold, epsilon, error_initial)`` when the caller classifies the
            samples at the last time point (converged: fixed-point residual below ``threshold``
            and error below epsilon^2 of ``error_initial`` (B,)): the stop then also waits until
            every sample's predicted classification is clear, a factor MARGIN from each bound.
    """

    MARGIN = 2.0
    REMAINDER = 10.0  # the last point may still be this many tolerances of |u*| from x*

    def __init__(self, params: LayerParams, ff, error: OutputError, cfg: SimulationConfig, sums, rule: str,
                 keep: Tensor | None, x: Tensor, classification: tuple[float, float, Tensor] | None = None) -> None:
        self.params, self.ff, self.error, self.cfg, self.sums, self.rule, self.x = params, ff, error, cfg, sums, rule, x
        self.classification = classification
        self.steps, self.check_every, self.tolerance = cfg.steps - 1, cfg.check_every, cfg.tolerance
        self.keep = keep
        self.point: FixedPoint | None = None  # x*, once Newton's method has reached it
        self.linear: LinearizedMap | None = None  # the step linearised there
        self.prediction: list[Tensor] | None = None  # the previous check's predicted update
        self.distance = 0.0  # and its largest relative distance |u - u*| / |u*|
        self.next_check, self.gave_up, self.unsettled = cfg.check_every, False, 0
        if sums is None and not last_point_can_settle(cfg, cfg.tolerance):
            self.gave_up = True  # the last point cannot be reached by T - 1: never check
        # x* to a tenth of the tolerance (the update is about as accurate as x*), not below rounding
        self.newton_rtol = max(50 * torch.finfo(x.dtype).eps, cfg.tolerance / 10)
        self.fixed_point_solves = 0

    def due(self, t: int) -> bool:
        """Whether step ``t`` (0-based) is followed by a check."""
        return not self.gave_up and t + 1 >= self.next_check

    def check(self, t: int, state: Deviation, rates_now: list[Tensor]) -> Tail | str | None:
        """After step ``t`` (0-based), ``state`` holding the absolute integral, control, apical
        control and the somatic deviations from the feedforward pass, ``rates_now`` the rate
        deviations: ``None`` (go on), ``"diverged"`` or the :class:`Tail`."""
        if t + 1 < self.next_check or self.gave_up:
            return None
        self.next_check = 2 * (t + 1)  # each check that does not stop doubles the interval: few checks in all
        u = state.control
        if not bool(torch.isfinite(self._masked(u)).all()):
            return "diverged"
        remaining = self.steps - 1 - t
        if remaining <= 0:
            return None
        point = self.point  # x* does not depend on t: once Newton has converged, it is reused as it is
        if point is None:  # from u = 0, the chord at the feedforward point (its first step is DFC-SSA's u)
            point = fixed_point(self.params, self.ff, self.error, self.cfg.alpha, torch.zeros_like(u),
                                rtol=self.newton_rtol)
            self.fixed_point_solves += 1
            if not point.converged:  # far from x* (a strong target early on): try once more later, then simulate on
                self.linear = self.prediction = None
                self.unsettled += 1
                self.gave_up = self.unsettled >= 2
                return None
            self.linear = LinearizedMap(self.params, self.ff, point, self.error, self.cfg)
            point.factors = self.linear.factors  # the Newton matrix at x*
            self.point = point
        linear = self.linear
        d = self._deviation(state, point)
        # powers of (I - A)^{-1}: each amplifies the slowest mode by 1 / (1 - rho) over the others;
        # a rule at the last point needs that mode's remainder there, so one power more
        powers = [linear.solve(d)]
        for _ in range(1 if self.sums is not None else 2):
            powers.append(linear.solve(powers[-1]))
        z, top = powers[0], powers[-1]
        norm = sample_norm
        first, second = norm(powers[-2].control), norm(top.control)
        rho = torch.where(second > 0, 1 - first / second.clamp_min(torch.finfo(u.dtype).tiny), torch.zeros_like(first))
        rho = self._masked(rho)
        if not bool(((rho >= 0) & (rho < 1)).all()):
            return None
        rho = rho.unsqueeze(1)
        slow = (1 - rho) ** len(powers)  # the slowest mode's part of d is (1 - rho)^p z_p; what N steps leave of it:
        left = rho**remaining * slow
        tail = Tail(remaining, point, torch.addcmul(point.u, left, top.control),
                    [torch.addcmul(star, left, top_i) for star, top_i in zip(point.dv, top.soma)])
        if not self._classification_is_clear(tail):
            return None
        if self.sums is None:  # a rule at the last point: its teaching signals there
            left_over = norm(left * top.control) / norm(point.u).clamp_min(torch.finfo(u.dtype).tiny)
            if float(self._masked(left_over).max()) > self.REMAINDER * self.tolerance:
                # not settled by the last point (its remainder is only estimated): the remainder
                # is rho^(T - 1) times the start's, so later checks would find the same: simulate on
                self.gave_up = True
                return None
            prediction = self._final_signals(tail)
        else:  # sum_k (x(t0 + k) - x*) = A z - A^(N+1) z, the second the slowest mode's
            beyond = rho ** (remaining + 1) * (1 - rho) ** (len(powers) - 1)
            totals = [torch.sub(zi - di, beyond * top_i) for zi, di, top_i in zip(z.soma, d.soma, top.soma)]
            self._add_time_average(tail, linear, d, totals)
            prediction = self.sums.predicted_update(tail, rates_now, self.ff.r, self.x)
        distance = float(self._masked(norm(d.control) / norm(point.u).clamp_min(torch.finfo(u.dtype).tiny)).max())
        previous, self.prediction = self.prediction, prediction
        previous_distance, self.distance = self.distance, distance
        if previous is None:
            return None
        change = max(float(sample_norm(p - q, dim=None) / sample_norm(p, dim=None).clamp_min(torch.finfo(p.dtype).tiny))
                     for p, q in zip(prediction, previous))
        # the prediction's error is second order in the distance d to x*: if it changed by `change`
        # while d^2 shrank by the factor q, what is left of it now is change * q / (1 - q)
        shrink = (distance / previous_distance) ** 2 if previous_distance > 0 else 0.0
        tail.agreement = change * max(1.0, shrink / (1.0 - shrink)) if shrink < 1 else float("inf")
        return tail if tail.agreement <= self.tolerance else None

    def _final_signals(self, tail: Tail) -> list[Tensor]:
        """The teaching signals at the predicted last point (what a steady-state rule uses)."""
        params, ff = self.params, self.ff
        dv = tail.final_soma
        dr = [act.rate_deviation(v, r, d) for act, v, r, d in zip(params.activations, ff.v, ff.r, dv)]
        signals = []
        for i, act in enumerate(params.activations):
            dvb = None if i == 0 else dr[i - 1] @ params.weights[i].T
            signals.append(self._masked(teaching_signal(self.rule, act, ff.v[i], dv[i], dvb, ff.r[i])))
        return signals

    def _classification_is_clear(self, tail: Tail) -> bool:
        """Whether every counted sample's predicted last point passes or fails the caller's
        convergence test by a factor MARGIN (a sample near a bound is simulated on)."""
        if self.classification is None:
            return True
        threshold, epsilon, error_initial = self.classification
        act, ff = self.params.activations[-1], self.ff
        error = self.error(act.rate_deviation(ff.v[-1], ff.r[-1], tail.final_soma[-1]))
        u_final = tail.final_control
        tiny = torch.finfo(u_final.dtype).tiny
        reference = sample_norm(ff.r[-1]).clamp_min(tiny)
        residual = sample_norm(error - self.cfg.alpha * u_final) / reference
        reduction = sample_norm(error) / (epsilon**2 * error_initial).clamp_min(tiny)
        clear = ((residual * self.MARGIN < threshold) | (residual > self.MARGIN * threshold)) & (
            (reduction * self.MARGIN < 1) | (reduction > self.MARGIN))
        if self.keep is not None:
            clear = clear | ~self.keep.squeeze(1)
        return bool(clear.all())

    def _masked(self, t: Tensor) -> Tensor:
        if self.keep is None:
            return t
        keep = self.keep if t.dim() == 2 else self.keep.squeeze(1)
        return torch.where(keep, t, torch.zeros_like(t))

    def _deviation(self, state: Deviation, point: FixedPoint) -> Deviation:
        """d = x(t0) - x*, the samples that do not count zeroed."""
        star_integral = None if state.integral is None else point.u * (1 - self.cfg.k_p * self.cfg.alpha)
        return Deviation(
            None if state.integral is None else self._masked(state.integral - star_integral),
            self._masked(state.control - point.u),
            None if state.apical is None else self._masked(state.apical - point.u),
            [self._masked(now - star) for now, star in zip(state.soma, point.dv)],
        )

    def _add_time_average(self, tail: Tail, linear: LinearizedMap, d: Deviation, totals: list[Tensor]) -> None:
        """The DFC rule's sums over the N remaining points, to first order in d, into ``tail``;
        ``totals``: sum_k (dv(t0 + k) - dv*) per layer."""
        params, rule, remaining, point = self.params, self.rule, tail.remaining, tail.point
        rates = [s * tot for s, tot in zip(linear.slopes, totals)]  # sum_k (dr - dr*)
        deviation_sums = []
        for i in range(params.num_layers):
            dvb = None
            if i > 0:  # the basal input's deviation, summed (without instantaneous transmission: one step late)
                pre = rates[i - 1] if self.cfg.inst_transmission else rates[i - 1] + linear.slopes[i - 1] * d.soma[i - 1]
                dvb = pre @ params.weights[i].T
            if rule == "voltage_difference":
                deviation = totals[i] if dvb is None else totals[i] - dvb
            else:
                deviation = rates[i] if dvb is None else rates[i] - linear.basal_slopes[i] * dvb
            deviation_sums.append(self._masked(deviation))
        tail.signals = [self._masked(s) for s in linear.signals(self.rule)]
        tail.deviation_sums = deviation_sums
        tail.signal_sums = [torch.add(dev, star, alpha=remaining) for dev, star in zip(deviation_sums, tail.signals)]
        tail.rate_sums = [self._masked(torch.add(r, dr, alpha=remaining)) for r, dr in zip(rates, point.dr)]

