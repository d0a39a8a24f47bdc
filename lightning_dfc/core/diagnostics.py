"""Diagnostics of DFC (Meulemans et al., NeurIPS 2021) as pure tensor functions.

The quantities the paper (and its reference implementation) monitors: its three conditions,
the stability of the controlled network, and the alignment of updates and feedback weights with
BP, Gauss-Newton (GN) and minimum-norm (MN) targets. Torchmetrics wrappers live in
:mod:`lightning_dfc.shell.metrics`.

Notation (shapes): B batch, n_i width of layer i (i = 1..L), n_0 input width,
S = n_1 + ... + n_L, P = number of forward parameters (all W_i and b_i).
``jacobian`` is Jbar = d r_L / d vbar, (B, n_L, S), as returned by
:func:`lightning_dfc.core.dynamics.output_jacobian`; ``qbar`` is Qbar = [Q_1; ...; Q_L], (S, n_L)
(``torch.cat(params.feedback)``), or one per sample, (B, S, n_L).

Every function is batched (no Python loop over samples) and side-effect free: it runs under
``torch.no_grad()``, except the ``method="autograd"`` Gauss-Newton path, which differentiates
detached copies with ``torch.func`` internally.

Cost (per call):

* Jacobian Jbar: O(B n_L S) memory, O(B n_L sum_i n_i n_{i-1}) time.
* Conditions 2 and 3, feedback alignment: O(B n_L^2 S) (an SVD / solve per sample).
* Stability: a dense (S + n_L)^2 matrix per sample and its eigenvalues, O(B (S + n_L)^3) time,
  O(B (S + n_L)^2) memory: the most expensive diagnostic (pass a few samples).
* GN update, ``method="structured"`` (default): O(B n_L S + P) memory, O(B n_L S (n_L + 1) + B P)
  time; ``method="autograd"``: the per-sample weight Jacobian J_W, O(B n_L P) memory.
* MN update: O(B n_L S + P).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .accumulators import outer_updates
from .dynamics import Feedforward, feedforward, output_jacobian
from .network import LayerParams
from .losses import Loss, loss_gradient

__all__ = [
    "Condition3",
    "FeedbackAlignment",
    "AlignmentAngles",
    "jacobian_at",
    "condition_1",
    "condition_2",
    "condition_3",
    "system_matrix",
    "stability",
    "angle",
    "row_angles",
    "damped_pinv_solve",
    "damped_gauss_newton_update",
    "damped_minimum_norm_update",
    "alignment_angles",
    "feedback_alignment",
    "feedback_condition_2",
]


# --------------------------------------------------------------------------------------------
# helpers


def _sizes(params: LayerParams) -> list[int]:
    return [w.shape[0] for w in params.weights]


def _qbar(params: LayerParams) -> Tensor:
    return torch.cat(params.feedback, 0)


def _eye(n: int, like: Tensor) -> Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _flat(tensors: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(tensors, Tensor):
        return tensors.reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


@torch.no_grad()
def jacobian_at(
    params: LayerParams, x: Tensor | None = None, v: Sequence[Tensor] | None = None
) -> Tensor:
    """Jbar = d r_L / d vbar at the pre-activations ``v``, or at the feedforward point of ``x``.

    Args:
        params: network tensors.
        x: input (B, n_0); used when ``v`` is not given.
        v: pre-activations, list of (B, n_i) (e.g. a steady state).

    Returns:
        (B, n_L, S).
    """
    if v is None:
        if x is None:
            raise ValueError("jacobian_at needs the input x or the pre-activations v")
        v = feedforward(params, x).v
    return output_jacobian(params, tuple(v))


# --------------------------------------------------------------------------------------------
# Conditions 1-3


@torch.no_grad()
def condition_1(x: Tensor, rates: Feedforward | Sequence[Tensor]) -> Tensor:
    """Condition 1 (equal layer norms): per-sample coefficient of variation of the layer norms.

    With the L presynaptic activities r_0 = x, r_1, ..., r_{L-1} (the output r_L excluded):

        c_b = std_i(||r_{i,b}||) / mean_i(||r_{i,b}||)

    with the population std (1/L, ``unbiased=False``). 0 means Condition 1 holds exactly.
    (The reference code returns sqrt(var / mean) instead, which is not scale invariant; the paper
    defines std / mean, which this is.) A sample whose norms are all 0 gives NaN.

    Args:
        x: input r_0 (B, n_0).
        rates: the feedforward pass (``feedforward(params, x)``) or its rates r_1..r_L, each
            (B, n_i); the last entry (the output) is ignored.

    Returns:
        (B,).
    """
    r = rates.r if isinstance(rates, Feedforward) else tuple(rates)
    pres = [x, *r[:-1]]
    norms = torch.stack([torch.linalg.vector_norm(p.flatten(1), dim=1) for p in pres], 1)  # (B, L)
    std, mean = torch.std_mean(norms, dim=1, correction=0)
    return std / mean


@torch.no_grad()
def condition_2(jacobian: Tensor, qbar: Tensor) -> Tensor:
    """Condition 2 (col Qbar within row Jbar): ||P Qbar||_F / ||Qbar||_F per sample.

    P = J^T (J J^T)^{-1} J is the orthogonal projection onto the row space of J. It is computed
    from the SVD J = U S V^T (P = V_r V_r^T over the singular vectors whose singular values exceed
    ``max(n_L, S) * eps * s_max``), so it stays exact for a rank-deficient J (e.g. a dead ReLU
    output), where (J J^T)^{-1} does not exist.

    Args:
        jacobian: J, (B, n_L, S).
        qbar: Qbar, (S, n_L) or (B, S, n_L).

    Returns:
        (B,) in [0, 1]; 1 means every column of Qbar lies in row(J).
    """
    _, s, vh = torch.linalg.svd(jacobian, full_matrices=False)  # vh: (B, k, S), k = min(n_L, S)
    tol = s[:, :1] * (max(jacobian.shape[-2:]) * torch.finfo(jacobian.dtype).eps)
    keep = (s > tol).to(jacobian.dtype).unsqueeze(-1)  # (B, k, 1)
    coords = (vh * keep) @ qbar  # (B, k, n_L): coordinates of P Qbar in the basis V_r
    num = torch.linalg.matrix_norm(coords)
    den = torch.linalg.matrix_norm(qbar)
    return num / den


class Condition3(NamedTuple):
    """Condition 3 per sample.

    Attributes:
        max_real_neg_jq: max Re eig(-Jbar Qbar), (B,).
        margin: ``alpha - max_real_neg_jq``, (B,). Condition 3 (max Re eig(-(J Q + alpha I)) < 0,
            i.e. the controller with leak alpha is stable in the instantaneous-network limit)
            holds iff ``margin > 0``.
    """

    max_real_neg_jq: Tensor
    margin: Tensor


@torch.no_grad()
def condition_3(jacobian: Tensor, qbar: Tensor, alpha: float) -> Condition3:
    """Condition 3: the eigenvalues of -(Jbar Qbar) have real parts below alpha.

    Condition 3 holds iff max Re eig(-(J Q + alpha I)) < 0, i.e. max Re eig(-J Q) < alpha. This is
    the reference's ``A_instI`` = -(J Q + alpha I) (the controlled system with an infinitely fast
    network and k_p = 0).

    Args:
        jacobian: J, (B, n_L, S).
        qbar: Qbar, (S, n_L) or (B, S, n_L).
        alpha: controller leak.

    Returns:
        :class:`Condition3` of two (B,) tensors.
    """
    eig = torch.linalg.eigvals(-(jacobian @ qbar))
    top = eig.real.amax(dim=-1)
    return Condition3(top, alpha - top)


# --------------------------------------------------------------------------------------------
# stability of the full controlled system


@torch.no_grad()
def system_matrix(
    params: LayerParams,
    v: Sequence[Tensor],
    alpha: float,
    k_p: float,
    tau_v: float,
    form: Literal["state", "reference"] = "state",
) -> Tensor:
    """Linearised system matrix of the network + leaky PI controller at pre-activations ``v``.

    Continuous-time dynamics (time in units of tau_u = 1; instantaneous apical compartment,
    v^A = Qbar u, i.e. ``tau_apical=None`` as in the reference default):

        tau_v dv_i/dt = -v_i + W_i r_{i-1} + b_i + Q_i u,    r_i = phi_i(v_i), r_0 = x
        u = u_int + k_p e,    e = r_L* - r_L,    du_int/dt = e - alpha u.

    The state is ``z = [v_1; ...; v_L; u_int]`` (dimension S + n_L); u is an algebraic function
    of it. The vector field is affine in u_int and its Jacobian depends only on v (not on the
    target or u_int). With Jhat (S, S) block-subdiagonal (block (i, i-1) = W_i diag phi'_{i-1}
    (v_{i-1}), i = 2..L; layer 1's input x is constant) and J_L0 (n_L, S) zero except its output
    block diag phi'_L(v_L), ``form="state"`` returns d(dz/dt)/dz:

        [[ -(I - Jhat + k_p Qbar J_L0) / tau_v,   Qbar / tau_v ],
         [ -(1 - alpha k_p) J_L0,                 -alpha I      ]]

    ``form="reference"`` returns the reference's ``A_PI`` (``compute_A_matrices``), the same
    linear system in the coordinates [(I - Jhat) dv; du] (apical-voltage deviation and total
    control), with a = (I - Jhat) / tau_v and Jbar = J_L0 (I - Jhat)^{-1}:

        [[ -a,                                a Qbar                               ],
         [ -Jbar + (k_p / tau_v) J_L0,        -(alpha I + (k_p / tau_v) J_L Q_L)   ]]

    The two are similar matrices (same eigenvalues). In both, a real part < 0 of every
    eigenvalue means the steady state is locally stable; the largest real part is the asymptotic
    growth (> 0) or decay (< 0) rate of a small perturbation, per unit of tau_u.

    Args:
        params: network tensors.
        v: pre-activations at which to linearise, list of (B, n_i) (e.g. the simulated steady
            state, or the feedforward ``ff.v``).
        alpha: controller leak; k_p: proportional gain; tau_v: somatic time constant
            (``SimulationConfig.alpha``, ``.k_p``, ``.tau_v``).
        form: ``"state"`` or ``"reference"`` (see above).

    Returns:
        (B, S + n_L, S + n_L).
    """
    sizes = _sizes(params)
    total, n_out = sum(sizes), sizes[-1]
    ref = v[0]
    batch = ref.shape[0]
    derivs = [act.derivative(vi) for act, vi in zip(params.activations, v)]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    jhat = ref.new_zeros(batch, total, total)
    for i in range(1, len(sizes)):
        rows, cols = slice(offsets[i], offsets[i + 1]), slice(offsets[i - 1], offsets[i])
        jhat[:, rows, cols] = params.weights[i] * derivs[i - 1].unsqueeze(1)
    j_l0 = ref.new_zeros(batch, n_out, total)
    j_l0[:, :, offsets[-2]:] = torch.diag_embed(derivs[-1])
    qbar = _qbar(params).to(ref)
    eye_s, eye_u = _eye(total, ref), _eye(n_out, ref)
    matrix = ref.new_empty(batch, total + n_out, total + n_out)
    if form == "state":
        matrix[:, :total, :total] = -(eye_s - jhat + k_p * (qbar @ j_l0)) / tau_v
        matrix[:, :total, total:] = qbar / tau_v
        matrix[:, total:, :total] = -(1.0 - alpha * k_p) * j_l0
        matrix[:, total:, total:] = -alpha * eye_u
    elif form == "reference":
        a = (eye_s - jhat) / tau_v
        jbar = output_jacobian(params, tuple(v))
        matrix[:, :total, :total] = -a
        matrix[:, :total, total:] = a @ qbar
        matrix[:, total:, :total] = -jbar + (k_p / tau_v) * j_l0
        matrix[:, total:, total:] = -(alpha * eye_u + (k_p / tau_v) * (j_l0 @ qbar))
    else:
        raise ValueError(f"form must be 'state' or 'reference', got {form!r}")
    return matrix


@torch.no_grad()
def stability(
    params: LayerParams, v: Sequence[Tensor], alpha: float, k_p: float, tau_v: float
) -> Tensor:
    """Largest real part of the eigenvalues of :func:`system_matrix`, per sample.

    < 0: the controlled network is locally stable at ``v`` (a perturbation decays like
    exp(t * value), t in units of tau_u); > 0: unstable.

    Returns:
        (B,). Cost O(B (S + n_L)^3): evaluate on a few samples.
    """
    return torch.linalg.eigvals(system_matrix(params, v, alpha, k_p, tau_v)).real.amax(dim=-1)


# --------------------------------------------------------------------------------------------
# angles


def _angle_from_vectors(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between the rows of a and b, (..., n) -> (...). NaN for zero rows.

    2 atan2(||a^ - b^||, ||a^ + b^||) with unit vectors a^, b^: accurate near 0 and 180 degrees,
    where acos of the cosine loses half the digits.
    """
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    rad = 2.0 * torch.atan2(
        torch.linalg.vector_norm(ua - ub, dim=-1), torch.linalg.vector_norm(ua + ub, dim=-1)
    )
    bad = (na.squeeze(-1) == 0) | (nb.squeeze(-1) == 0)
    return torch.where(bad, torch.full_like(rad, math.nan), torch.rad2deg(rad))


@torch.no_grad()
def angle(a: Tensor | Sequence[Tensor], b: Tensor | Sequence[Tensor]) -> Tensor:
    """Angle in degrees between two tensors, or two lists of tensors, flattened and concatenated.

    Returns:
        0-dim tensor in [0, 180]; NaN if either side is all zeros.

    Raises:
        ValueError: if the two sides have different numbers of elements.
    """
    fa, fb = _flat(a), _flat(b)
    if fa.numel() != fb.numel():
        raise ValueError(f"angle: {fa.numel()} elements against {fb.numel()}")
    dtype = torch.promote_types(fa.dtype, fb.dtype)
    return _angle_from_vectors(fa.to(dtype), fb.to(dtype))


@torch.no_grad()
def row_angles(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample angles in degrees: ``a`` and ``b`` (B, ...) (broadcastable), each sample
    flattened. Returns (B,), NaN for zero samples."""
    a, b = torch.broadcast_tensors(a, b)
    return _angle_from_vectors(a.flatten(1), b.flatten(1))


class AlignmentAngles(NamedTuple):
    """Angles (degrees, 0-dim tensors) between two updates.

    Attributes:
        layers: one per layer: the angle between the concatenations [W_i, b_i] (b_i if present).
        network: the angle between the whole flattened updates.
    """

    layers: list[Tensor]
    network: Tensor


def _group_layers(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """Group W_1, b_1, W_2, ... (biases optional) into layers: a 2-D tensor starts a layer."""
    groups: list[list[Tensor]] = []
    for t in tensors:
        if t.dim() == 2 or not groups:
            groups.append([t])
        else:
            groups[-1].append(t)
    return groups


@torch.no_grad()
def alignment_angles(update, reference) -> AlignmentAngles:
    """Per-layer and whole-network angles between two forward-parameter updates.

    Args:
        update, reference: an :class:`~lightning_dfc.core.rules.Update`, or a list of tensors in the
            order W_1, b_1, ..., W_L, b_L (biases optional; e.g. ``Update.tensors()``,
            ``DFCNetwork.forward_parameters()`` gradients, or the output of
            :func:`damped_gauss_newton_update`). Layers are recognised by the 2-D weights.

    Returns:
        :class:`AlignmentAngles`.

    Raises:
        ValueError: if the two updates have different layouts.
    """
    ta = update.tensors() if hasattr(update, "tensors") else list(update)
    tb = reference.tensors() if hasattr(reference, "tensors") else list(reference)
    ga, gb = _group_layers(ta), _group_layers(tb)
    if [[t.shape for t in g] for g in ga] != [[t.shape for t in g] for g in gb]:
        raise ValueError("alignment_angles: the two updates have different shapes")
    return AlignmentAngles([angle(a, b) for a, b in zip(ga, gb)], angle(ta, tb))


# --------------------------------------------------------------------------------------------
# GN and MN updates


@torch.no_grad()
def damped_pinv_solve(jacobian: Tensor, rhs: Tensor, damping: float) -> Tensor:
    """Per sample J^T (J J^T + damping I)^{-1} rhs (the damped minimum-norm solution of J d = rhs).

    ``damping == 0`` uses the pseudo-inverse, pinv(J) rhs (also for a rank-deficient J).

    Args:
        jacobian: J, (B, m, n).
        rhs: (B, m).
        damping: gamma >= 0.

    Returns:
        (B, n).
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if damping == 0:
        return (torch.linalg.pinv(jacobian) @ rhs.unsqueeze(-1)).squeeze(-1)
    gram = jacobian @ jacobian.mT + damping * _eye(jacobian.shape[-2], jacobian)
    coef = torch.linalg.solve(gram, rhs.unsqueeze(-1))
    return (jacobian.mT @ coef).squeeze(-1)


def _functional_output(params: LayerParams, theta: Sequence[Tensor], x: Tensor) -> Tensor:
    """r_L for one sample ``x`` (n_0,) with the forward parameters ``theta`` = W_1, b_1, ...

    Written independently of :mod:`lightning_dfc.core.dynamics` (for ``torch.func``)."""
    it = iter(theta)
    h = x
    for b, act in zip(params.biases, params.activations):
        w = next(it)
        h = w @ h
        if b is not None:
            h = h + next(it)
        h = act(h)
    return h


def _split_update(
    params: LayerParams, layer_blocks: list[Tensor], pres: list[Tensor]
) -> list[Tensor]:
    """Batch-mean outer products: W_i = mean_b d_i r_{i-1}^T, b_i = mean_b d_i (W_1, b_1, ...)."""
    weights, biases = outer_updates(list(layer_blocks), pres, params.biases, 1.0 / pres[0].shape[0])
    return [t for w, b in zip(weights, biases) for t in (w, b) if t is not None]


def damped_gauss_newton_update(
    params: LayerParams,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    damping: float,
    method: Literal["structured", "autograd"] = "structured",
) -> list[Tensor]:
    """Damped Gauss-Newton update of the forward parameters, in gradient sign.

        dtheta = (1/B) sum_b J_W,b^T (J_W,b J_W,b^T + damping I)^{-1} g_b

    with J_W,b = d r_L / d theta (n_L, P) for sample b (theta = all W_i and b_i) and g_b the row b
    of :func:`~lightning_dfc.core.losses.loss_gradient` (d of the batch-mean loss w.r.t. r_{L,b}; no
    lambda). ``damping == 0`` uses pinv(J_W,b) g_b. This is the reference's
    ``compute_gn_parameter_update``. Sign: the same as :func:`~lightning_dfc.core.rules.bp_update`
    (for damping -> inf, damping * dtheta -> BP gradient / B: angle 0 with BP).

    Args:
        params: network tensors.
        x: input (B, n_0); y: labels (B,) or regression targets (B, n_L).
        loss: ``"cross_entropy"`` or ``"mse"``.
        damping: gamma >= 0.
        method: ``"structured"`` (default) uses the exact structure of an MLP,
            d r_L / d W_i = Jbar_i (x) r_{i-1}^T and d r_L / d b_i = Jbar_i, so that
            J_W J_W^T = sum_i (||r_{i-1}||^2 + [b_i present]) Jbar_i Jbar_i^T and J_W^T c is a
            set of outer products: no (n_L, P) matrix is formed (O(B n_L S + P) memory).
            ``"autograd"`` forms J_W per sample with ``torch.func.vmap(jacrev)`` on an
            independent functional forward pass (O(B n_L P) memory); same result.

    Returns:
        List W_1, b_1, ..., W_L, b_L (biases only where present), shaped like the parameters.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    x = x.detach()
    with torch.no_grad():
        ff = feedforward(params, x)
        grad_out = loss_gradient(ff.r[-1], y, loss)
    if method == "structured":
        with torch.no_grad():
            jac = output_jacobian(params, ff.v)  # (B, n_L, S)
            pres = [x, *ff.r[:-1]]
            scale = torch.cat(
                [
                    (pre.pow(2).sum(1, keepdim=True) + float(b is not None)).expand(-1, n)
                    for pre, b, n in zip(pres, params.biases, _sizes(params))
                ],
                dim=1,
            )  # (B, S): ||r_{i-1}||^2 (+1) repeated over layer i's units
            gram = (jac * scale.unsqueeze(1)) @ jac.mT  # J_W J_W^T, (B, n_L, n_L)
            if damping == 0:
                coef = torch.linalg.pinv(gram, hermitian=True) @ grad_out.unsqueeze(-1)
            else:
                damped = gram + damping * _eye(gram.shape[-1], gram)
                coef = torch.linalg.solve(damped, grad_out.unsqueeze(-1))
            d = (jac.mT @ coef).squeeze(-1)  # (B, S): per-sample Jbar^T c
            return _split_update(params, list(torch.split(d, _sizes(params), dim=1)), pres)
    if method != "autograd":
        raise ValueError(f"method must be 'structured' or 'autograd', got {method!r}")
    from torch.func import jacrev, vmap

    theta = [
        t.detach().clone()
        for w, b in zip(params.weights, params.biases)
        for t in (w, b)
        if t is not None
    ]
    with torch.enable_grad():
        per_sample = jacrev(lambda th, xb: _functional_output(params, th, xb))
        per_tensor = vmap(per_sample, in_dims=(None, 0))(theta, x)
    with torch.no_grad():
        batch, n_out = x.shape[0], grad_out.shape[1]
        jw = torch.cat([j.reshape(batch, n_out, -1) for j in per_tensor], dim=2)  # (B, n_L, P)
        flat_update = damped_pinv_solve(jw, grad_out, damping).mean(0)
        chunks = torch.split(flat_update, [t.numel() for t in theta])
        return [chunk.reshape(t.shape) for chunk, t in zip(chunks, theta)]


@torch.no_grad()
def damped_minimum_norm_update(
    params: LayerParams,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    damping: float,
    nonlinear: bool = True,
) -> list[Tensor]:
    """Damped minimum-norm (MN; "GNT" in the reference code) update, in gradient sign.

    Per sample the damped minimum-norm pre-activation change (Jbar at the feedforward point)

        dv_b = Jbar_b^T (Jbar_b Jbar_b^T + damping I)^{-1} g_b     (pinv(Jbar_b) g_b if damping = 0)

    then, with ``nonlinear=True`` (the reference's ``use_nonlinear_gnt``, forced on with the
    ``nonlinear_difference`` rule):

        dW_i = (1/B) sum_b [phi_i(v_{i,b}^- + dv_{i,b}) - phi_i(v_{i,b}^-)] r_{i-1,b}^{-T},
        db_i = (1/B) sum_b [phi_i(v_{i,b}^- + dv_{i,b}) - phi_i(v_{i,b}^-)],

    and with ``nonlinear=False`` the bracket is dv_{i,b}. g_b as in
    :func:`damped_gauss_newton_update`. Note the sign: the reference perturbs v^- by +dv (the
    gradient-sign direction), not by -dv as the descent-direction steady state of DFC does; the
    two differ at second order in dv.

    Returns:
        List W_1, b_1, ..., W_L, b_L (biases only where present), shaped like the parameters.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    ff = feedforward(params, x)
    grad_out = loss_gradient(ff.r[-1], y, loss)
    dv = damped_pinv_solve(output_jacobian(params, ff.v), grad_out, damping)
    blocks = torch.split(dv, _sizes(params), dim=1)
    if nonlinear:
        blocks = [act.difference(v + d, v, gap=d) for act, v, d in zip(params.activations, ff.v, blocks)]
    return _split_update(params, list(blocks), [x, *ff.r[:-1]])


# --------------------------------------------------------------------------------------------
# feedback alignment


@torch.no_grad()
def feedback_condition_2(params: LayerParams, x: Tensor) -> Tensor:
    """Condition 2 of the network's feedback weights at the feedforward points of ``x`` (B, n_0):
    the batch mean of :func:`condition_2` (0-dim). What ``feedback.pretrain_until`` compares with
    its threshold."""
    return condition_2(jacobian_at(params, x), torch.cat(list(params.feedback))).mean()


class FeedbackAlignment(NamedTuple):
    """Angles (degrees) between Qbar and Jbar^T, and between Qbar and the damped pseudo-inverse
    Jbar^T (Jbar Jbar^T + damping I)^{-1}; batch means (0-dim) or per sample (B,)."""

    transpose: Tensor
    pseudoinverse: Tensor


@torch.no_grad()
def feedback_alignment(
    jacobian: Tensor,
    qbar: Tensor,
    damping: float = 0.0,
    reduction: Literal["mean", "none"] = "mean",
) -> FeedbackAlignment:
    """Alignment of the feedback weights with Jbar^T and with its damped pseudo-inverse.

    Per sample b: angle(Qbar, J_b^T) and angle(Qbar, J_b^T (J_b J_b^T + damping I)^{-1})
    (pinv(J_b) if damping = 0), each matrix flattened; then the batch mean (as the reference).

    Args:
        jacobian: J, (B, n_L, S).
        qbar: Qbar, (S, n_L) or (B, S, n_L).
        damping: gamma >= 0 of the damped pseudo-inverse.
        reduction: ``"mean"`` (0-dim results) or ``"none"`` ((B,) results).

    Returns:
        :class:`FeedbackAlignment`.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    jt = jacobian.mT
    if damping == 0:
        pinv = torch.linalg.pinv(jacobian)
    else:
        gram = jacobian @ jt + damping * _eye(jacobian.shape[-2], jacobian)
        pinv = torch.linalg.solve(gram, jacobian).mT  # J^T (J J^T + g I)^{-1} (gram symmetric)
    out = FeedbackAlignment(
        row_angles(qbar.expand_as(jt), jt), row_angles(qbar.expand_as(pinv), pinv)
    )
    if reduction == "none":
        return out
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return FeedbackAlignment(out.transpose.mean(), out.pseudoinverse.mean())
