"""The control loss H of Strong-DFC as a diagnostic, as pure tensor functions (no Lightning).

Strong-DFC (Meulemans, Tristany Farinha, Cervera et al., ICML 2022) drives the output all the way
to the label; its learning rule makes every neuron reduce the feedback input it needs, i.e. it
descends the *control loss*

    H = ||Qbar u_ss||^2,

the squared norm of the total feedback ("help") that holds the network at its controlled steady
state. H = 0 exactly when the network already produces the target (then u_ss = 0). The authors'
code (mariacer/strong_dfc) does not train on dH/dW: it computes it only to log the angle between
the applied update and -dH/dW (``--save_H_angle``) and logs H itself; this module provides the same
diagnostics.

Notation (shapes): B batch, n_i width of layer i (i = 1..L), n_0 input width,
S = n_1 + ... + n_L, Qbar = [Q_1; ...; Q_L] (S, n_L), Jbar = d r_L / d vbar (B, n_L, S) as
returned by :func:`lightning_dfc.core.dynamics.output_jacobian`.

The controlled steady state (the fixed point of the simulated dynamics of
:func:`lightning_dfc.core.dynamics.simulate` without noise; the leak acts on the total u, so at rest
du_int/dt = e - alpha u = 0, whatever k_p, tau_v and the apical time constant):

    v_i = W_i r_{i-1} + b_i + Q_i u,   r_i = phi_i(v_i),   r_0 = x,
    e(r_L) = alpha u,

with the error ``mse``: e = r* - r_L (the DFC error), or ``cross_entropy``: e = r* - softmax(r_L)
(Strong-DFC's error with a linear output layer: minus the gradient of the cross-entropy to the
soft label r*). The simulation's names for the same two errors, ``linear`` and ``softmax`` (a
target's ``output_error``, :mod:`~lightning_dfc.core.targets`), are accepted as well.

Functions:

* :func:`controlled_steady_state`: the fixed point by batched Newton iterations on u.
* :func:`control_loss`: H per sample, its batch mean, or the authors' logged normalisation.
* :func:`control_loss_gradient`: dH/dW_i, dH/db_i in closed form (implicit differentiation).
* :func:`steady_state_update`: Strong-DFC's local rule at the steady state (gradient sign).
* :func:`h_update_angle`: angle between an update and dH/dW (0 degrees: the update descends H).
* :func:`condition_2_at_steady_state`: the authors' Condition 2, ||P_{J^T} Qbar|| / ||Qbar||,
  with J at the controlled state (wraps :func:`lightning_dfc.core.diagnostics.condition_2`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .accumulators import outer_updates
from .config import RULES
from .diagnostics import AlignmentAngles, alignment_angles, condition_2
from .dynamics import feedforward, output_jacobian
from .network import LayerParams

__all__ = [
    "ERRORS",
    "ControlledSteadyState",
    "ControlLossGradient",
    "controlled_steady_state",
    "control_loss",
    "control_loss_gradient",
    "steady_state_update",
    "h_update_angle",
    "condition_2_at_steady_state",
]

ErrorType = Literal["mse", "cross_entropy", "linear", "softmax"]
ERRORS = ("mse", "cross_entropy")
# the simulation's vocabulary (``ControlTarget.output_error``) names the same two errors
_OUTPUT_ERRORS = {"linear": "mse", "softmax": "cross_entropy"}


# --------------------------------------------------------------------------------------------
# helpers


def _sizes(params: LayerParams) -> list[int]:
    return [w.shape[0] for w in params.weights]


def _qbar(params: LayerParams) -> Tensor:
    return torch.cat(params.feedback, 0)


def _check_error(error: str) -> str:
    """``error`` as ``mse``/``cross_entropy`` (``linear``/``softmax``, a target's ``output_error``,
    are the same two errors)."""
    error = _OUTPUT_ERRORS.get(error, error)
    if error not in ERRORS:
        raise ValueError(f"unknown error type {error!r}; choose one of {ERRORS} (or {tuple(_OUTPUT_ERRORS)})")
    return error


def _check_alpha(alpha: float, error: str) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"alpha (the controller leak) must be a finite number >= 0, got {alpha!r}")
    if error == "cross_entropy" and alpha == 0:
        raise ValueError(
            "alpha must be > 0 with the cross_entropy error: softmax is invariant to a shift of "
            "all logits, so with alpha = 0 the controlled steady state is not unique"
        )
    return value


def _check_input(params: LayerParams, x: Tensor) -> None:
    n_in = params.sizes[0]
    if x.dim() != 2 or x.shape[1] != n_in:
        raise ValueError(
            f"input x of shape {tuple(x.shape)} does not match the network: expected (B, {n_in})"
        )


def _check_batch_vector(name: str, t: Tensor, batch: int, width: int) -> None:
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] != width:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not match: expected ({batch}, {width})"
        )


def _sweep(params: LayerParams, x: Tensor, u: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Controlled sweep v_i = W_i r_{i-1} + b_i + Q_i u, r_i = phi_i(v_i); lists of (B, n_i)."""
    swept = feedforward(params, x, torch.split(u @ _qbar(params).T, _sizes(params), dim=1))
    return list(swept.v), list(swept.r)


def _error(error: str, target: Tensor, output: Tensor) -> Tensor:
    """e(r_L), (B, n_L)."""
    if error == "mse":
        return target - output
    return target - torch.softmax(output, dim=1)


def _apply_g(error: str, output: Tensor, m: Tensor) -> Tensor:
    """G m with G = d g / d r_L (g = identity or softmax), batched over the leading dimension.

    ``m`` is (B, n_L, k). G = I for ``mse``; G = diag(p) - p p^T (symmetric) for
    ``cross_entropy``, p = softmax(r_L).
    """
    if error == "mse":
        return m
    p = torch.softmax(output, dim=1).unsqueeze(-1)  # (B, n_L, 1)
    return p * m - p @ (p.mT @ m)


def _scale(target: Tensor) -> Tensor:
    """Scale of the residual test: 1 + ||r*|| per sample, (B,)."""
    return 1.0 + torch.linalg.vector_norm(target, dim=1)


# --------------------------------------------------------------------------------------------
# the controlled steady state


class ControlledSteadyState(NamedTuple):
    """Controlled steady state found by :func:`controlled_steady_state`.

    Attributes:
        u: control signal u_ss, (B, n_L).
        v: somatic voltages v_i, list of (B, n_i), i = 1..L.
        r: rates r_i = phi_i(v_i), list of (B, n_i).
        converged: boolean (B,): the sample's residual is below the tolerance.
        residual: ||e(r_L) - alpha u|| / (1 + ||r*||) per sample, (B,) (NaN if non-finite).
        iterations: Newton iterations spent on each sample, (B,) int64.
    """

    u: Tensor
    v: list[Tensor]
    r: list[Tensor]
    converged: Tensor
    residual: Tensor
    iterations: Tensor

    @property
    def num_not_converged(self) -> int:
        """How many samples did not converge (0 when all did)."""
        return int((~self.converged).sum())


def _check_solver_args(
    params: LayerParams,
    x: Tensor,
    target: Tensor,
    alpha: float,
    error: str,
    tol: float | None,
    max_iter: int,
    max_halvings: int,
    u0: Tensor | None,
    on_failure: str,
) -> tuple[float, float]:
    """Validate the solver's arguments (x (B, n_0), target and u0 (B, n_L)); return alpha, tol."""
    error = _check_error(error)
    alpha = _check_alpha(alpha, error)
    _check_input(params, x)
    batch, n_out = x.shape[0], params.sizes[-1]
    _check_batch_vector("target", target, batch, n_out)
    if u0 is not None:
        _check_batch_vector("u0", u0, batch, n_out)
    if tol is None:
        tol = 1e-12 if x.dtype == torch.float64 else 1e-5
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(max_halvings, int) and max_halvings >= 0):
        raise ValueError(f"max_halvings must be an integer >= 0, got {max_halvings!r}")
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}")
    return alpha, tol


def _residual_at(
    params: LayerParams,
    error: str,
    alpha: float,
    x: Tensor,
    target: Tensor,
    u: Tensor,
    scale: Tensor,
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """Sweep at u (B, n_L): v, r (lists of (B, n_i)), F = e - alpha u (B, n_L), ||F||/scale (B,)."""
    vs, rs = _sweep(params, x, u)
    f = _error(error, target, rs[-1]) - alpha * u
    res = torch.linalg.vector_norm(f, dim=1) / scale
    return vs, rs, f, torch.where(torch.isfinite(res), res, torch.full_like(res, math.inf))


def _newton_direction(
    params: LayerParams,
    error: str,
    alpha: float,
    qbar: Tensor,
    eye: Tensor,
    v: list[Tensor],
    output: Tensor,
    f: Tensor,
) -> Tensor:
    """Newton step (G Jbar Qbar + alpha I)^{-1} F, (B, n_L); NaN rows where the solve failed."""
    jq = output_jacobian(params, v) @ qbar  # (Ba, n_L, n_L)
    system = _apply_g(error, output, jq) + alpha * eye
    step, info = torch.linalg.solve_ex(system, f.unsqueeze(-1))
    step = step.squeeze(-1)
    return torch.where((info == 0).unsqueeze(1), step, torch.full_like(step, math.nan))


def _line_search(
    params: LayerParams,
    error: str,
    alpha: float,
    max_halvings: int,
    x: Tensor,
    target: Tensor,
    u: Tensor,
    scale: Tensor,
    f: Tensor,
    res: Tensor,
    v: list[Tensor],
    r: list[Tensor],
    step: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Backtracking (t = 2^-k) per sample: accepted (B,), new u, F (B, n_L), res (B,), v, r.

    A sample takes the first t that reduces its residual; a sample no step reduces keeps its
    old state and is not ``accepted``.
    """
    t = torch.ones_like(res)
    accepted = torch.zeros_like(res, dtype=torch.bool)
    new_u, new_f, new_res = u.clone(), f.clone(), res.clone()
    new_v = [t_.clone() for t_ in v]
    new_r = [t_.clone() for t_ in r]
    for _ in range(max_halvings + 1):
        pending = (~accepted).nonzero().squeeze(1)
        if pending.numel() == 0:
            break
        trial_u = u[pending] + t[pending].unsqueeze(1) * step[pending]
        tv, tr, tf, tres = _residual_at(
            params, error, alpha, x[pending], target[pending], trial_u, scale[pending]
        )
        ok = tres < res[pending]
        take = pending[ok]
        new_u[take], new_f[take], new_res[take] = trial_u[ok], tf[ok], tres[ok]
        for dst, src in zip(new_v, tv):
            dst[take] = src[ok]
        for dst, src in zip(new_r, tr):
            dst[take] = src[ok]
        accepted[take] = True
        t[pending[~ok]] *= 0.5
    return accepted, new_u, new_f, new_res, new_v, new_r


def _newton_solve(
    params: LayerParams,
    x: Tensor,
    target: Tensor,
    u0: Tensor | None,
    alpha: float,
    error: str,
    tol: float,
    max_iter: int,
    max_halvings: int,
) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor, Tensor]:
    """Damped Newton on F(u) = 0: u (B, n_L), v, r (lists of (B, n_i)), res (B,), iterations (B,).

    res is inf where non-finite. Only the samples still iterating are processed each iteration;
    a sample stops when it converged or when no step reduced its residual (stalled).
    """
    qbar = _qbar(params)
    eye = torch.eye(params.sizes[-1], dtype=x.dtype, device=x.device)
    scale = _scale(target)
    u = torch.zeros_like(target) if u0 is None else u0.clone()
    v, r, f, res = _residual_at(params, error, alpha, x, target, u, scale)
    iterations = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    active = res > tol  # inf (non-finite) counts as active: it may still recover with a line search
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        va, ra, fa = [t[idx] for t in v], [t[idx] for t in r], f[idx]
        step = _newton_direction(params, error, alpha, qbar, eye, va, ra[-1], fa)
        iterations[idx] += 1
        accepted, new_u, new_f, new_res, new_v, new_r = _line_search(
            params, error, alpha, max_halvings,
            x[idx], target[idx], u[idx], scale[idx], fa, res[idx], va, ra, step,
        )  # fmt: skip
        u[idx], f[idx], res[idx] = new_u, new_f, new_res
        for dst, src in zip(v, new_v):
            dst[idx] = src
        for dst, src in zip(r, new_r):
            dst[idx] = src
        still = accepted & (new_res > tol)
        active = torch.zeros_like(active)
        active[idx[still]] = True
    return u, v, r, res, iterations


@torch.no_grad()
def controlled_steady_state(
    params: LayerParams,
    x: Tensor,
    target: Tensor,
    alpha: float,
    error: ErrorType = "mse",
    *,
    tol: float | None = None,
    max_iter: int = 50,
    max_halvings: int = 30,
    u0: Tensor | None = None,
    on_failure: Literal["warn", "raise"] = "warn",
) -> ControlledSteadyState:
    """Solve for the controlled steady state by batched Newton iterations on u.

    Per sample, the n_L unknowns u solve F(u) = e(r_L(u)) - alpha u = 0, where r_L(u) is the
    controlled forward sweep v_i = W_i r_{i-1} + b_i + Q_i u, r_i = phi_i(v_i), r_0 = x. This is
    the fixed point of the noise-free dynamics that :func:`lightning_dfc.core.dynamics.simulate`
    integrates (leak on the total u: e = alpha u at rest, independently of k_p and the time
    constants). Writing e = r* - g(r_L) with g = identity (``mse``) or softmax
    (``cross_entropy``) and G = dg/dr_L (I, or diag(p) - p p^T with p = softmax(r_L)), the
    Jacobian is dF/du = -(G Jbar Qbar + alpha I), Jbar =
    :func:`~lightning_dfc.core.dynamics.output_jacobian` at the current v, and the Newton step is

        u <- u + t (G Jbar Qbar + alpha I)^{-1} F(u),

    with a per-sample backtracking line search on ||F|| (t = 1, 1/2, 1/4, ...). Everything is
    vectorised over the samples still iterating (no Python loop over samples).

    Args:
        params: network tensors (:class:`~lightning_dfc.core.network.LayerParams`).
        x: input r_0, (B, n_0).
        target: r_L*, (B, n_L) (Strong-DFC: the (soft) label; DFC: the nudged target).
        alpha: controller leak, >= 0 (> 0 for ``cross_entropy``).
        error: ``"mse"`` (e = r* - r_L) or ``"cross_entropy"`` (e = r* - softmax(r_L)).
        tol: a sample has converged when ||e(r_L) - alpha u|| <= tol (1 + ||r*||). Default 1e-12
            in float64, 1e-5 otherwise.
        max_iter: cap on Newton iterations (>= 1).
        max_halvings: cap on the step halvings of the line search per iteration. A sample whose
            residual no step can reduce stops iterating (and is reported if above ``tol``).
        u0: initial control, (B, n_L); default 0 (the feedforward state). A previous solution
            makes a good warm start.
        on_failure: what to do if some sample did not converge: ``"warn"`` (a RuntimeWarning
            with the count) or ``"raise"`` (RuntimeError). The count is also in the result.

    Returns:
        :class:`ControlledSteadyState`.

    Raises:
        ValueError: for mismatched shapes, an unknown error type, alpha < 0 (or alpha = 0 with
            ``cross_entropy``), or a bad ``tol`` / ``max_iter`` / ``on_failure``.
    """
    alpha, tol = _check_solver_args(
        params, x, target, alpha, error, tol, max_iter, max_halvings, u0, on_failure
    )
    u, v, r, res, iterations = _newton_solve(
        params, x, target, u0, alpha, error, tol, max_iter, max_halvings
    )
    converged = res <= tol
    residual = torch.where(torch.isfinite(res), res, torch.full_like(res, math.nan))
    result = ControlledSteadyState(u, v, r, converged, residual, iterations)
    failed = result.num_not_converged
    if failed:
        worst = residual[~converged]
        msg = (
            f"controlled_steady_state: {failed} of {x.shape[0]} samples did not converge within "
            f"{max_iter} Newton iterations (tol={tol:g}; largest residual "
            f"{float(worst.nan_to_num(math.inf).max()):.3g}); see the result's `converged` mask"
        )
        if on_failure == "raise":
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return result


# --------------------------------------------------------------------------------------------
# H and its gradient


@torch.no_grad()
def control_loss(
    params: LayerParams, u: Tensor, reduction: Literal["none", "mean", "reference"] = "none"
) -> Tensor:
    """The control loss H = ||Qbar u||^2 (the squared total feedback input to all neurons).

    Args:
        params: network tensors (only the feedback weights Q_i are used).
        u: control signal, (B, n_L) (normally u_ss of :func:`controlled_steady_state`).
        reduction: ``"none"``: H per sample, (B,); ``"mean"``: the batch mean (the quantity
            :func:`control_loss_gradient` differentiates), 0-dim; ``"reference"``: what the
            authors log (``loss_function_H`` in ``dfc/networks/dfc_network_utils.py``),
            sum_b ||Qbar u_b||^2 / (B S), i.e. the batch mean divided by the number of neurons
            S = n_1 + ... + n_L (input excluded), 0-dim.

    Returns:
        (B,) or a 0-dim tensor.

    Raises:
        ValueError: if ``u`` is not (B, n_L) or the reduction is unknown.
    """
    qbar = _qbar(params)
    if u.dim() != 2 or u.shape[1] != qbar.shape[1]:
        raise ValueError(
            f"u of shape {tuple(u.shape)} does not match the network: expected (B, {qbar.shape[1]})"
        )
    h = torch.sum((u @ qbar.T) ** 2, dim=1)
    if reduction == "none":
        return h
    if reduction == "mean":
        return h.mean()
    if reduction == "reference":
        return h.mean() / qbar.shape[0]
    raise ValueError(f"reduction must be 'none', 'mean' or 'reference', got {reduction!r}")


class ControlLossGradient(NamedTuple):
    """Gradient of the batch-mean control loss w.r.t. the forward parameters.

    Attributes:
        weights: dH/dW_i, (n_i, n_{i-1}), one per layer.
        biases: dH/db_i, (n_i,), or ``None`` for a layer without bias.
    """

    weights: list[Tensor]
    biases: list[Tensor | None]

    def tensors(self) -> list[Tensor]:
        """W_1, b_1, ..., W_L, b_L (biases only where present), the layout of
        :meth:`~lightning_dfc.core.rules.Update.tensors`."""
        return [t for w, b in zip(self.weights, self.biases) for t in (w, b) if t is not None]


def _check_state(params: LayerParams, x: Tensor, steady_state) -> None:
    batch, sizes = x.shape[0], _sizes(params)
    _check_batch_vector("steady_state.u", steady_state.u, batch, params.sizes[-1])
    for name in ("v", "r"):
        seq = getattr(steady_state, name)
        if len(seq) != len(sizes):
            raise ValueError(f"steady_state.{name} has {len(seq)} layers, the network {len(sizes)}")
        for i, (t, n) in enumerate(zip(seq, sizes)):
            _check_batch_vector(f"steady_state.{name}[{i}]", t, batch, n)


def _masked_state(
    x: Tensor, steady_state, mask: Tensor | None
) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor]:
    """Samples kept by the mask: u (B', n_L), v (list of (B', n_i)), r_{i-1} (from r_0 = x), r_L."""
    if mask is None:
        mask = getattr(steady_state, "converged", None)
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (x.shape[0],)):
        raise ValueError(
            f"mask must be a boolean tensor of shape ({x.shape[0]},), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    u, v, r = steady_state.u, list(steady_state.v), list(steady_state.r)
    pres = [x, *r[:-1]]
    if mask is not None and not bool(mask.all()):
        u, v, pres, r_out = u[mask], [t[mask] for t in v], [t[mask] for t in pres], r[-1][mask]
    else:
        r_out = r[-1]
    return u, v, pres, r_out


def _control_loss_delta(
    params: LayerParams,
    x: Tensor,
    u: Tensor,
    v: list[Tensor],
    r_out: Tensor,
    alpha: float,
    error: str,
) -> Tensor:
    """delta = -2 J^T G M^{-T} Qbar^T Qbar u per sample, (B, S), from u (B, n_L) and v, r_L."""
    qbar = _qbar(params)
    n_out = qbar.shape[1]
    jac = output_jacobian(params, v)  # (B, n_L, S)
    gj = _apply_g(error, r_out, jac)  # (B, n_L, S)
    system = gj @ qbar + alpha * torch.eye(n_out, dtype=x.dtype, device=x.device)
    rhs = (u @ qbar.T) @ qbar  # (B, n_L): Qbar^T Qbar u
    w = torch.linalg.solve(system.mT, rhs.unsqueeze(-1))  # (B, n_L, 1)
    return -2.0 * (gj.mT @ w).squeeze(-1)  # (B, S): -2 J^T G w  (G symmetric)


@torch.no_grad()
def control_loss_gradient(
    params: LayerParams,
    x: Tensor,
    steady_state,
    alpha: float,
    error: ErrorType = "mse",
    mask: Tensor | None = None,
) -> ControlLossGradient:
    """dH/dW_i and dH/db_i of the batch-mean H = mean_b ||Qbar u_ss,b||^2, in closed form.

    **Derivation** (implicit differentiation, one sample). The steady state solves
    F(u, theta) = e(r_L(u, theta)) - alpha u = 0, r_L(u, theta) being the controlled forward
    sweep. Write G = d g / d r_L for the output map of the error (e = r* - g(r_L)): G = I for
    ``mse``, G = diag(p) - p p^T for ``cross_entropy`` (p = softmax(r_L); symmetric), and
    J = Jbar = d r_L / d vbar at the steady state. Then d r_L / du = J Qbar and, since W_i enters
    only through v_i = W_i r_{i-1} + ..., d r_L = J_i dW_i r_{i-1} (J_i: the columns of layer
    i). Differentiating F = 0:

        -(G J Qbar + alpha I) du - G J_i dW_i r_{i-1} = 0
        => du = -M^{-1} G J_i dW_i r_{i-1},     M = G J Qbar + alpha I  (n_L, n_L),

    and dH = 2 u^T Qbar^T Qbar du. With w = M^{-T} Qbar^T Qbar u (n_L) and
    delta = -2 J^T G w (S), split into layer blocks delta_i (n_i):

        dH/dW_i = delta_i r_{i-1}^T,     dH/db_i = delta_i,

    r_{i-1} the *steady-state* (controlled) rate, r_0 = x. Averaged over the batch. For ``mse``,
    delta^T / 2 = -u^T Qbar^T Qbar (J Qbar + alpha I)^{-1} J: the authors' formula
    (``compute_H_update`` in ``dfc/networks/dfc_network.py``, which returns 1/2 dH/dtheta: this
    function's values are twice theirs; angles are unaffected). The authors' formula has no G:
    with ``cross_entropy`` it differs from the exact gradient computed here.

    If Qbar = J^T K for some K (n_L, n_L) (Condition 2 exactly) and G = I, then as alpha -> 0,
    w -> K u and J^T w -> Qbar u: -dH/dW_i is parallel to Q_i u r_{i-1}^T, the direction in which
    the local Strong-DFC rule moves W_i.

    Args:
        params: network tensors.
        x: input r_0, (B, n_0).
        steady_state: any object with ``u`` (B, n_L) and lists ``v``, ``r`` of (B, n_i) at the
            controlled steady state (e.g. :class:`ControlledSteadyState`). The formula assumes an
            exact fixed point.
        alpha: the leak the steady state was computed with.
        error: ``"mse"`` or ``"cross_entropy"``, as for the steady state.
        mask: boolean (B,): average over these samples only. Default: ``steady_state.converged``
            when present (non-converged samples are left out), else all samples. An empty mask
            gives zeros.

    Returns:
        :class:`ControlLossGradient` (gradient sign: an optimizer subtracting it descends H).

    Raises:
        ValueError: for mismatched shapes, an unknown error type, or alpha < 0.
    """
    error = _check_error(error)
    alpha = _check_alpha(alpha, error)
    _check_input(params, x)
    _check_state(params, x, steady_state)
    u, v, pres, r_out = _masked_state(x, steady_state, mask)
    count = u.shape[0]
    if count == 0:
        return ControlLossGradient(
            [torch.zeros_like(w) for w in params.weights],
            [None if b is None else torch.zeros_like(b) for b in params.biases],
        )
    delta = _control_loss_delta(params, x, u, v, r_out, alpha, error)
    blocks = torch.split(delta, _sizes(params), dim=1)
    return ControlLossGradient(*outer_updates(list(blocks), pres, params.biases, 1.0 / count))


# --------------------------------------------------------------------------------------------
# the local rule at the steady state, the angle, Condition 2


@torch.no_grad()
def steady_state_update(
    params: LayerParams,
    x: Tensor,
    steady_state,
    rule: str = "voltage_difference",
    mask: Tensor | None = None,
) -> ControlLossGradient:
    """Strong-DFC's local forward rule at a steady state, in the library's gradient sign.

        dW_i = -2/B sum_b s_i r_{i-1}^T,   db_i = -2/B sum_b s_i,

    with s_i = v_i - (W_i r_{i-1} + b_i) (``voltage_difference``; = Q_i u_ss at an exact fixed
    point) or phi(v_i) - phi(W_i r_{i-1} + b_i) (``nonlinear_difference``), the basal input
    recomputed from the steady-state rates (the two-phase ``--ss`` variant). The factor -2 and the
    batch mean are those of :mod:`lightning_dfc.core.rules`: an optimizer subtracting it moves W_i by
    +2/B sum_b s_i r_{i-1}^T.

    Args:
        params, x, steady_state: as for :func:`control_loss_gradient`.
        rule: ``"voltage_difference"`` or ``"nonlinear_difference"``.
        mask: boolean (B,): average over these samples only (default: ``steady_state.converged``
            when present).

    Returns:
        :class:`ControlLossGradient`-shaped update (``weights``, ``biases``, ``tensors()``).
    """
    _check_input(params, x)
    _check_state(params, x, steady_state)
    if mask is None:
        mask = getattr(steady_state, "converged", None)
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; choose one of {RULES}")
    v, r = list(steady_state.v), list(steady_state.r)
    pres = [x, *r[:-1]]
    if mask is not None and not bool(mask.all()):
        v, r, pres = ([t[mask] for t in seq] for seq in (v, r, pres))
    count = max(pres[0].shape[0], 1)
    signals = []
    for i, act in enumerate(params.activations):
        w, b = params.weights[i], params.biases[i]
        basal = pres[i] @ w.T if b is None else torch.addmm(b, pres[i], w.T)
        signals.append(v[i] - basal if rule == "voltage_difference" else act.difference(v[i], basal))
    return ControlLossGradient(*outer_updates(signals, pres, params.biases, -2.0 / count))


def h_update_angle(update, grad_h, with_bias: bool = True) -> AlignmentAngles:
    """Angle (degrees) between a forward-weight update and dH/dW, per layer and overall.

    Both in the gradient sign convention (what is written to ``.grad``; the optimizer subtracts
    it, see :class:`lightning_dfc.core.rules.Update`). 0 degrees: the optimizer step points along
    -dH/dW (steepest descent of H); 90: it does not change H to first order; > 90: it increases
    H. This is the authors' ``lu_angle`` (``save_H_angles``), which compares ``.grad`` with their
    1/2 dH/dtheta.

    Args:
        update: an :class:`~lightning_dfc.core.rules.Update`, a :class:`ControlLossGradient`, or a
            list W_1, b_1, ..., W_L, b_L (biases optional).
        grad_h: :func:`control_loss_gradient`'s result (or the same kinds as ``update``).
        with_bias: include the biases. The authors' angles are over the weights only (per layer
            and for the whole network): ``with_bias=False`` reproduces them.

    Returns:
        :class:`~lightning_dfc.core.diagnostics.AlignmentAngles`: ``layers`` (one 0-dim tensor per
        layer, over [W_i, b_i]) and ``network`` (all flattened). NaN where a side is all zeros.

    Raises:
        ValueError: if the two updates have different layouts.
    """
    ta = update.tensors() if hasattr(update, "tensors") else list(update)
    tb = grad_h.tensors() if hasattr(grad_h, "tensors") else list(grad_h)
    if not with_bias:
        ta = [t for t in ta if t.dim() == 2]
        tb = [t for t in tb if t.dim() == 2]
    return alignment_angles(ta, tb)


@torch.no_grad()
def condition_2_at_steady_state(params: LayerParams, v: Sequence[Tensor]) -> Tensor:
    """The Condition-2 quantity the authors track for Strong-DFC, ||P Qbar||_F / ||Qbar||_F.

    P = J^T (J J^T)^{-1} J is the projection onto the row space of J = d r_L / d vbar. This is
    exactly :func:`lightning_dfc.core.diagnostics.condition_2` (reused here); the authors'
    ``compute_condition_two`` linearises at the network's current (controlled) state, so this
    helper evaluates J at the given steady-state voltages ``v`` (list of (B, n_i)), e.g.
    ``controlled_steady_state(...).v``; the diagnostics monitor evaluates it at the feedforward
    point. The authors log the batch mean. 1 means col(Qbar) lies in row(J), where the local rule
    descends H (for alpha -> 0, ``mse``).

    Returns:
        (B,) in [0, 1].
    """
    return condition_2(output_jacobian(params, tuple(v)), _qbar(params))
