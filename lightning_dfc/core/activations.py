"""Elementwise activations the DFC dynamics can simulate.

Each activation is a small frozen object with the function ``phi``, its derivative
``derivative`` and a cancellation-free ``difference(v, v_basal) = phi(v) - phi(v_basal)``
(the teaching signal of the ``nonlinear_difference`` rule). The difference form matters in
float32: late in training ``v`` and ``v_basal`` differ by ~1e-8 relative, and subtracting two
nearly equal activations loses every significant digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Activation", "activation_from_module", "SUPPORTED_ACTIVATIONS"]

SUPPORTED_ACTIVATIONS = ("Tanh", "ReLU", "LeakyReLU", "Sigmoid", "Identity")


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity ``phi`` with the pieces the DFC core needs.

    Args:
        name: one of ``tanh``, ``relu``, ``leaky_relu``, ``sigmoid``, ``linear``.
        negative_slope: slope for ``leaky_relu`` (ignored otherwise).
    """

    name: str
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.name not in ("tanh", "relu", "leaky_relu", "sigmoid", "linear"):
            raise ValueError(
                f"unknown activation {self.name!r}; supported: tanh, relu, leaky_relu, sigmoid, linear"
            )

    def __call__(self, v: Tensor) -> Tensor:
        """``phi(v)``, any shape."""
        if self.name == "tanh":
            return torch.tanh(v)
        if self.name == "relu":
            return torch.relu(v)
        if self.name == "leaky_relu":
            return torch.nn.functional.leaky_relu(v, self.negative_slope)
        if self.name == "sigmoid":
            return torch.sigmoid(v)
        return v

    def derivative(self, v: Tensor) -> Tensor:
        """``phi'(v)``, same shape as ``v`` (0 for ReLU at v < 0, as in the reference)."""
        if self.name == "tanh":  # sech^2, not 1 - tanh^2: no cancellation where saturated
            if v.dtype == torch.float64:  # the published float64 numerics' rounding, unchanged
                return torch.cosh(v).square().reciprocal()
            e = torch.exp(v.abs().mul_(-2.0))  # sech^2 = 4 e / (1 + e)^2: torch's cosh is not vectorised
            denominator = e.add(1.0).square_()
            return e.mul_(4.0).div_(denominator)
        if self.name == "relu":
            return (v > 0).to(v.dtype)
        if self.name == "leaky_relu":
            return torch.where(v > 0, torch.ones_like(v), torch.full_like(v, self.negative_slope))
        if self.name == "sigmoid":
            s = torch.sigmoid(v)
            return s * (1.0 - s)
        return torch.ones_like(v)

    def difference(
        self,
        v: Tensor,
        v_basal: Tensor,
        gap: Tensor | None = None,
        phi_v: Tensor | None = None,
        phi_basal: Tensor | None = None,
    ) -> Tensor:
        """``phi(v) - phi(v_basal)`` without catastrophic cancellation.

        tanh: tanh(a) - tanh(b) = tanh(a - b) (1 - tanh(a) tanh(b)) (exact identity);
        sigmoid: s(a) - s(b) = -expm1(b - a) s(a) s(-b) (exact identity);
        linear: a - b; (leaky) ReLU: slope * (a - b) where a and b lie on the same side of 0.

        Args:
            v, v_basal: the two arguments (any shape, same shape).
            gap: ``v - v_basal`` when the caller knows it more accurately than the subtraction
                (the deviation-form simulation computes it from small quantities); the
                identities above then never subtract nearly equal numbers.
            phi_v, phi_basal: ``phi(v)`` and ``phi(v_basal)`` when already known (saves work).
        """
        gap = v - v_basal if gap is None else gap
        if self.name == "linear":
            return gap
        if self.name == "tanh":
            phi_v = torch.tanh(v) if phi_v is None else phi_v
            phi_basal = torch.tanh(v_basal) if phi_basal is None else phi_basal
            return torch.tanh(gap) * (1.0 - phi_v * phi_basal)
        if self.name == "sigmoid":
            # s(a) - s(b) = (1 - e^{-(a-b)}) s(a) (1 - s(b)) = -expm1(-(a-b)) s(a) (1 - s(b))
            phi_v = torch.sigmoid(v) if phi_v is None else phi_v
            one_minus = torch.sigmoid(-v_basal)  # not 1 - phi_basal: that cancels where saturated
            return -torch.expm1(-gap) * phi_v * one_minus
        # relu / leaky_relu: exact slope * (v - v_basal) where both sit on the same side of 0
        slope = 0.0 if self.name == "relu" else self.negative_slope
        both_pos, both_neg = (v > 0) & (v_basal > 0), (v <= 0) & (v_basal <= 0)
        phi_v = self(v) if phi_v is None else phi_v
        phi_basal = self(v_basal) if phi_basal is None else phi_basal
        return torch.where(both_pos, gap, torch.where(both_neg, slope * gap, phi_v - phi_basal))

    def deviation(self, v_ref: Tensor, r_ref: Tensor, dv: Tensor, slope_ref: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rate and rate deviation at ``v_ref + dv``: ``(phi(v_ref + dv), phi(v_ref + dv) - r_ref)``.

        The deviation is computed without subtracting nearly equal numbers, so it keeps full
        relative precision however small ``dv`` is (the float32 fast path relies on this).

        Args:
            v_ref, r_ref: reference voltage and its rate ``phi(v_ref)``; dv: deviation. Same shape.
            slope_ref: ``phi'(v_ref)`` if precomputed (used by tanh).
        """
        dr = self.rate_deviation(v_ref, r_ref, dv, slope_ref)
        return r_ref + dr, dr

    def rate_deviation(self, v_ref: Tensor, r_ref: Tensor, dv: Tensor, slope_ref: Tensor | None = None) -> Tensor:
        """``phi(v_ref + dv) - r_ref`` alone, cancellation-free (see :meth:`deviation`).

        For tanh, with A = tanh(v_ref) and T = tanh(dv): tanh(v_ref + dv) - A = T (1 - A^2) / (1 + A T),
        one transcendental call per element.
        """
        if self.name == "linear":
            return dv
        if self.name == "tanh":
            t = torch.tanh(dv)
            slope_ref = self.derivative(v_ref) if slope_ref is None else slope_ref
            if t.dtype == torch.float64:  # the published float64 numerics' rounding, unchanged
                denominator = torch.mul(r_ref, t).add_(1.0)
            else:
                denominator = torch.addcmul(_one(t), r_ref, t)
            return t.mul_(slope_ref).div_(denominator)
        v = v_ref + dv
        return self.difference(v, v_ref, gap=dv, phi_basal=r_ref)

    def deviation_difference(
        self,
        v_ref: Tensor,
        r_ref: Tensor,
        dv: Tensor,
        dr: Tensor,
        dv_basal: Tensor,
        slope_ref: Tensor | None = None,
    ) -> Tensor:
        """``phi(v_ref + dv) - phi(v_ref + dv_basal)`` from deviations, without cancellation.

        ``dr`` = phi(v_ref + dv) - r_ref (from :meth:`deviation`). For tanh the factor
        1 - tanh(a) tanh(b) is expanded around the reference, (1 - A^2) - A (p + q) - p q with
        p, q the two rate deviations, so saturated units keep their precision too.
        """
        dr_basal = self.rate_deviation(v_ref, r_ref, dv_basal, slope_ref)
        if self.name == "tanh":
            slope_ref = self.derivative(v_ref) if slope_ref is None else slope_ref
            factor = slope_ref - r_ref * (dr + dr_basal) - dr * dr_basal
            return torch.tanh(dv - dv_basal) * factor
        return self.difference(
            v_ref + dv, v_ref + dv_basal, gap=dv - dv_basal, phi_v=r_ref + dr, phi_basal=r_ref + dr_basal
        )


class DirectDeviation:
    """``act`` whose rate deviation is the plain difference phi(v_ref + dv) - r_ref.

    For the float32 simulations of noisy dynamics: their deviations are set by the noise (the
    smallest published level, sigma 2.8e-5, lies more than 400 times above float32's rounding of
    the rates, about 6e-8 |r|), so the identity of
    :meth:`Activation.rate_deviation` buys no precision there, and the difference is one pass
    over memory cheaper.

    tanh goes through the sigmoid, tanh(v) - r_ref = 2 sigmoid(2 v) - (1 + r_ref), with 2 v_ref and
    1 + r_ref formed once per reference (one object per simulation): float32 ``torch.tanh`` costs
    about three sigmoids on a CPU, and the four passes (add, sigmoid, scale, subtract) cost about
    40 % of add, tanh, subtract. Its rounding, at most about 2.4e-7 absolute (against 5e-8 for
    tanh), is 1/18,000 of the noise of the published passes that take this route (Strong-DFC's
    single phase and DFC with noise, sigma 4.3e-3; the smaller pre-training and sleep noise runs
    in the fused state)."""

    def __init__(self, act: Activation) -> None:
        self.act, self.name = act, act.name
        self._refs: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def _sigmoid_refs(self, v_ref: Tensor, r_ref: Tensor) -> tuple[Tensor, Tensor]:
        key = (id(v_ref), id(r_ref))
        if key not in self._refs:  # the references are kept, so their ids stay theirs
            self._refs[key] = (v_ref, r_ref, v_ref * 2.0, r_ref + 1.0)
        _, _, twice_v, one_plus_r = self._refs[key]
        return twice_v, one_plus_r

    def rate_deviation(self, v_ref: Tensor, r_ref: Tensor, dv: Tensor, slope_ref: Tensor | None = None) -> Tensor:
        if self.name == "linear":
            return dv
        if self.name == "tanh":
            twice_v, one_plus_r = self._sigmoid_refs(v_ref, r_ref)
            return torch.add(twice_v, dv, alpha=2.0).sigmoid_().mul_(2.0).sub_(one_plus_r)
        return torch.sub(self.act(v_ref + dv), r_ref)


_ONES: dict[tuple, Tensor] = {}


def _one(like: Tensor) -> Tensor:
    """A 0-dim 1 of ``like``'s dtype and device (cached), for one fused addcmul."""
    key = (like.dtype, like.device)
    if key not in _ONES:
        _ONES[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return _ONES[key]


def activation_from_module(module: nn.Module) -> Activation | None:
    """Map a torch activation module to an :class:`Activation`, or ``None`` if unsupported."""
    if isinstance(module, nn.Tanh):
        return Activation("tanh")
    if isinstance(module, nn.ReLU):
        return Activation("relu")
    if isinstance(module, nn.LeakyReLU):
        return Activation("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.Sigmoid):
        return Activation("sigmoid")
    if isinstance(module, nn.Identity):
        return Activation("linear")
    return None
