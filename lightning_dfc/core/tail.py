"""The rest of a settled noise-free simulation in closed form: the early stop of the fast numerics.

After its fast transient (the somata settle within a few tau_v / dt steps), a noise-free
simulation approaches the controller's fixed point along its slowest mode: for each sample b the
distance to the fixed point shrinks by a factor rho_b per Euler step. From a step t0 on, the
remaining N = T - 1 - t0 time points are then, to first order in that (small) distance,

    x_b(t0 + k) = x*_b + rho_b^k (x_b(t0) - x*_b),    k = 1..N,

for every part of the state (control, voltages, rates, teaching signals). :class:`SettledTail`
decides when this holds and gives what the simulation would have reached:

* the fixed point x*: e(r_L) = alpha u with v_i = W_i r_{i-1} + b_i + Q_i u, the steady state of
  every variant of the dynamics (proactive or not, any apical time constant), solved by Newton's
  method on the control (:func:`fixed_point`);
* rho_b from the distances to it at two checks, accepted only where it agrees with the ratio of
  successive changes of u (one mode dominates);
* a bound on what is extrapolated: at most ``tolerance`` of each sample's control, weighted by the
  extrapolated part's share of the time average (the DFC rule) or left at the last time point
  (rules that use the final state: DFC-SS, Strong-DFC two phases). Where the extrapolation is
  off by 10 %, the update is then off by ~0.1 ``tolerance``.

Before that holds the simulation goes on, so a batch that never settles is simulated in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .network import LayerParams
from .state import teaching_signal

__all__ = ["OutputError", "FixedPoint", "controlled_sweep", "control_jacobian", "newton_factors", "fixed_point",
           "SettledTail", "Tail"]


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
        return self.target - torch.softmax(self.output_ff + dr_out, dim=1)

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
        return torch.linalg.vector_norm(offset, dim=1)


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


def control_jacobian(params: LayerParams, v: list[Tensor]) -> Tensor:
    """d r_L / d u with the somata at their steady state at voltages ``v`` (list of (B, n_i)):
    Jbar Qbar, (B, n_L, n_L), by forward mode: Z_i = phi_i'(v_i) (Q_i + W_i Z_{i-1})."""
    z = None
    for i, act in enumerate(params.activations):
        q = params.feedback[i].unsqueeze(1)  # (n_i, 1, n_L)
        if z is not None:  # z: (n_{i-1}, B, n_L); W_i z in one GEMM
            q = (params.weights[i] @ z.flatten(1)).view(-1, z.shape[1], z.shape[2]) + q
        z = q * act.derivative(v[i]).T.unsqueeze(2)
    return z.permute(1, 0, 2)


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
                factors: tuple[Tensor, Tensor] | None = None, max_iterations: int = 8,
                rtol: float | None = None) -> FixedPoint:
    """Solve e(r_L(u)) = alpha u for the control (B, n_L) by Newton's method from ``u0``, with the
    somata at their steady state (:func:`controlled_sweep`).

    Chord iterations: the Jacobian's ``factors`` (:func:`newton_factors`; computed at ``u0`` when
    not given) are reused, and refreshed once if the iterations stall. A sample has converged when
    its last step moved u by at most ``rtol`` of |u| (default: 50 machine epsilons, the rounding
    floor of e near the fixed point)."""
    rtol = 50 * torch.finfo(u0.dtype).eps if rtol is None else rtol
    u = u0.clone()
    dv, dr = controlled_sweep(params, ff, u)
    refreshed, converged = False, False
    for iteration in range(max_iterations):
        if factors is None or (iteration == max_iterations // 2 and not refreshed):
            refreshed = factors is not None
            factors = newton_factors(params, ff, error, alpha, dv, dr[-1])
        residual = error(dr[-1]) - alpha * u
        step = torch.linalg.lu_solve(*factors, residual.unsqueeze(-1)).squeeze(-1)
        u = u + step
        dv, dr = controlled_sweep(params, ff, u)
        size = torch.linalg.vector_norm(step, dim=1)
        if not bool(torch.isfinite(size).all()):
            break
        if bool((size <= rtol * torch.linalg.vector_norm(u, dim=1)).all()):
            converged = True
            break
    return FixedPoint(u, dv, dr, converged, factors)


@dataclass
class Tail:
    """The extrapolated rest of a simulation from step t0 on (see the module docstring).

    Attributes:
        remaining: N, the time points after t0.
        rho: per-sample contraction per step (B,).
        point: the fixed point x*.
        signals: the teaching signals at x*, per layer (B, n_i) (``None`` unless asked for).
        geometric: sum_{k=1..N} rho^k (B, 1); ``geometric2``: sum rho^{2k}; ``last``: rho^N.
        weight: the largest per-sample bound on the extrapolated part (what ``tolerance`` bounds).
    """

    remaining: int
    rho: Tensor
    point: FixedPoint
    signals: list[Tensor] | None
    geometric: Tensor
    geometric2: Tensor
    last: Tensor
    weight: float

    def final(self, now: Tensor, star: Tensor) -> Tensor:
        """A state variable at the last time point, x* + rho^N (x(t0) - x*)."""
        return torch.addcmul(star, self.last, now - star)


class SettledTail:
    """The fast numerics' early stop: every ``check_every`` steps, whether the rest of the
    simulation can be added in closed form (:class:`Tail`), within ``tolerance``.

    Args:
        params, ff: the network and its feedforward pass.
        error: the controller's output error.
        alpha: the controller's leak; ``steps``: the Euler steps of the full simulation (T - 1).
        check_every, tolerance: see :class:`~lightning_dfc.core.config.SimulationConfig`.
        time_average: the rule averages the trajectory (DFC) rather than using its last point.
        rule: the teaching signal whose fixed-point value the time average needs.
        keep: (B, 1) samples that count (``None``: all).
    """

    AGREEMENT = 0.1  # rho from the fixed point and from successive changes must agree this well
    GATE = 8.0  # the cheap pre-check (no fixed point) passes below GATE * tolerance

    def __init__(self, params: LayerParams, ff, error: OutputError, alpha: float, steps: int, check_every: int,
                 tolerance: float, time_average: bool, rule: str, keep: Tensor | None) -> None:
        self.params, self.ff, self.error, self.alpha = params, ff, error, alpha
        self.steps, self.check_every, self.tolerance = steps, check_every, tolerance
        self.time_average, self.rule = time_average, rule
        self.keep = None if keep is None else keep.squeeze(1)
        self.previous: list[Tensor] = []  # u at the last two checks, newest first
        self.warm: FixedPoint | None = None  # the last fixed point (Newton's warm start and Jacobian)
        self.fixed_point_solves = 0

    def check(self, t: int, u: Tensor) -> Tail | str | None:
        """After step ``t`` (0-based): ``None`` (go on), ``"diverged"``, or the :class:`Tail`."""
        if (t + 1) % self.check_every:
            return None
        if not bool(torch.isfinite(u if self.keep is None else u[self.keep]).all()):
            return "diverged"
        tail = self._tail(t, u) if len(self.previous) == 2 else None
        self.previous = [u.clone(), *self.previous[:1]]
        return tail

    def _tail(self, t: int, u: Tensor) -> Tail | None:
        remaining = self.steps - 1 - t
        if remaining <= 0:
            return None
        k = self.check_every
        norm = lambda a: torch.linalg.vector_norm(a, dim=1)  # noqa: E731
        step_new, step_old = norm(u - self.previous[0]), norm(self.previous[0] - self.previous[1])
        ratio = torch.where(step_old > 0, step_new / step_old, torch.zeros_like(step_new))  # rho^k, one mode
        if self.keep is not None:  # samples that do not count may hold anything
            ratio = torch.where(self.keep, ratio, torch.zeros_like(ratio))
            step_new = torch.where(self.keep, step_new, torch.zeros_like(step_new))
        u_size = norm(u).clamp_min(torch.finfo(u.dtype).tiny)
        cheap = self._weight(step_new * ratio / (1 - ratio).clamp_min(1e-12), ratio, k, remaining, u_size)
        if not (bool((ratio < 1).all()) and cheap <= self.GATE * self.tolerance):
            return None
        warm = self.warm
        point = fixed_point(self.params, self.ff, self.error, self.alpha, u if warm is None else warm.u,
                            factors=None if warm is None else warm.factors)
        self.fixed_point_solves += 1
        if not point.converged:
            self.warm = None
            return None
        self.warm = point
        distance, before = norm(u - point.u), norm(self.previous[0] - point.u)
        settled = distance <= 1e-6 * u_size  # already at the fixed point (e.g. a zero target)
        rho_k = torch.where(settled, torch.zeros_like(distance), distance / before.clamp_min(torch.finfo(u.dtype).tiny))
        agree = settled | ((rho_k - ratio).abs() <= self.AGREEMENT * (1 - rho_k))
        if self.keep is not None:
            agree = agree | ~self.keep
        if not (bool(agree.all()) and bool((rho_k < 1).all())):
            return None
        weight = self._weight(distance, rho_k, k, remaining, u_size)
        if weight > self.tolerance:
            return None
        rho = rho_k.clamp_min(0) ** (1.0 / k)
        last = rho**remaining
        geometric = torch.where(rho < 1, rho * (1 - last) / (1 - rho).clamp_min(1e-30), torch.full_like(rho, remaining))
        rho2 = rho * rho
        geometric2 = torch.where(rho2 < 1, rho2 * (1 - last * last) / (1 - rho2).clamp_min(1e-30),
                                 torch.full_like(rho, remaining))
        signals = self._signals(point) if self.time_average else None
        return Tail(remaining, rho, point, signals, geometric.unsqueeze(1), geometric2.unsqueeze(1),
                    last.unsqueeze(1), weight)

    def _weight(self, distance: Tensor, rho_k: Tensor, k: int, remaining: int, u_size: Tensor) -> float:
        """The largest per-sample bound on the extrapolated part, relative to the sample's control."""
        rho = rho_k.clamp(0, 1) ** (1.0 / k)
        if self.time_average:  # its share of the time average over all T points
            share = rho * (1 - rho**remaining) / (1 - rho).clamp_min(1e-30) / (self.steps + 1)
        else:  # what is left at the last point, with an error of rho^N growing with N (1 - rho)
            share = rho**remaining * torch.clamp(remaining * (1 - rho), min=1.0)
        weight = share * distance / u_size
        if self.keep is not None:
            weight = torch.where(self.keep, weight, torch.zeros_like(weight))
        return float(weight.max()) if weight.numel() else 0.0

    def _signals(self, point: FixedPoint) -> list[Tensor]:
        params, ff = self.params, self.ff
        out = []
        for i, act in enumerate(params.activations):
            dvb = None if i == 0 else point.dr[i - 1] @ params.weights[i].T
            out.append(teaching_signal(self.rule, act, ff.v[i], point.dv[i], dvb, ff.r[i]))
        return out
