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
        if self.name == "tanh":
            t = torch.tanh(v)
            return 1.0 - t * t
        if self.name == "relu":
            return (v > 0).to(v.dtype)
        if self.name == "leaky_relu":
            return torch.where(v > 0, torch.ones_like(v), torch.full_like(v, self.negative_slope))
        if self.name == "sigmoid":
            s = torch.sigmoid(v)
            return s * (1.0 - s)
        return torch.ones_like(v)

    def difference(self, v: Tensor, v_basal: Tensor) -> Tensor:
        """``phi(v) - phi(v_basal)`` without catastrophic cancellation.

        tanh: tanh(a) - tanh(b) = tanh(a - b) (1 - tanh(a) tanh(b)) (exact identity);
        sigmoid: s(a) - s(b) = -expm1(b - a) s(a) s(-b) (exact identity);
        linear: a - b; (leaky) ReLU: slope * (a - b) where a and b lie on the same side of 0.
        """
        if self.name == "tanh":
            return torch.tanh(v - v_basal) * (1.0 - torch.tanh(v) * torch.tanh(v_basal))
        if self.name == "sigmoid":
            # s(a) - s(b) = (1 - e^{-(a-b)}) s(a) (1 - s(b)) = -expm1(-(a-b)) s(a) (1 - s(b))
            return -torch.expm1(v_basal - v) * torch.sigmoid(v) * torch.sigmoid(-v_basal)
        if self.name == "linear":
            return v - v_basal
        # relu / leaky_relu: exact slope * (v - v_basal) where both sit on the same side of 0
        slope = 0.0 if self.name == "relu" else self.negative_slope
        diff = v - v_basal
        both_pos, both_neg = (v > 0) & (v_basal > 0), (v <= 0) & (v_basal <= 0)
        mixed = self(v) - self(v_basal)
        return torch.where(both_pos, diff, torch.where(both_neg, slope * diff, mixed))


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
