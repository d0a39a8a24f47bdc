"""The losses the methods train on, their gradients in closed form, and the output targets
derived from them: DFC's nudged target r_L* = r_L^- - lambda dL/dr_L and Strong-DFC's label
target. ``output`` is (B, n_L); ``y`` class indices (B,) (cross-entropy) or targets (B, n_L) (MSE).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Loss", "LOSSES", "check_loss", "loss_value", "loss_gradient", "output_delta", "output_target", "strong_target"]

Loss = Literal["cross_entropy", "mse"]
LOSSES = ("cross_entropy", "mse")


def check_loss(loss: str, output_activation: str) -> None:
    """Refuse an unknown ``loss``, and cross-entropy on a network whose output layer is not linear
    (``output_activation``: its activation's name): every door checks the same."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if loss == "cross_entropy" and output_activation != "linear":
        raise ValueError(
            "cross_entropy absorbs the softmax into the loss: the network's output layer must "
            f"be linear, but it ends with {output_activation}. Remove the output "
            "activation or use loss='mse'."
        )


def loss_value(output: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """Batch-mean loss. ``output`` (B, n_L); ``y`` class indices (B,) or targets (B, n_L)."""
    if loss == "cross_entropy":
        return F.cross_entropy(output, y.long())
    if loss == "mse":
        return F.mse_loss(output, y)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def loss_gradient(output: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """d(batch-mean loss)/d(output), (B, n_L), in closed form.

    Cross-entropy (softmax absorbed, linear output): (softmax(output) - onehot(y)) / B.
    MSE (mean over batch and outputs): 2 (output - y) / (B n_L).
    """
    batch = output.shape[0]
    if loss == "cross_entropy":
        if y.dtype.is_floating_point or y.dim() != 1:
            raise ValueError("cross_entropy expects integer class labels of shape (B,)")
        probs = torch.softmax(output, dim=1)
        return (probs - F.one_hot(y.long(), output.shape[1]).to(output.dtype)) / batch
    if loss == "mse":
        if y.shape != output.shape:
            raise ValueError(f"mse expects targets shaped like the output {tuple(output.shape)}, got {tuple(y.shape)}")
        return 2.0 * (output - y.to(output.dtype)) / output.numel()
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def output_delta(output: Tensor, y: Tensor, loss: Loss, target_stepsize: float) -> Tensor:
    """delta = r_L* - r_L^- = -lambda d(batch-mean loss)/d(r_L), (B, n_L), formed directly (no
    subtraction of nearly equal outputs, which would cancel in float32)."""
    return -target_stepsize * loss_gradient(output, y, loss)


def strong_target(output: Tensor, y: Tensor, loss: Loss, class_value: float = 0.99) -> tuple[Tensor, str]:
    """Strong-DFC's controller target: the label itself, and the error the controller sees.

    Cross-entropy: soft labels (``class_value`` for the correct class, (1 - class_value)/(n_L - 1)
    for the others; a softmax can never reach an exact one-hot) with e = r_L* - softmax(r_L).
    MSE: the regression target with e = r_L* - r_L.

    Returns:
        (target (B, n_L), ``output_error`` mode of :func:`~lightning_dfc.core.dynamics.simulate`).
    """
    if loss == "cross_entropy":
        if y.dtype.is_floating_point or y.dim() != 1:
            raise ValueError("cross_entropy expects integer class labels of shape (B,)")
        if not 0.0 < class_value < 1.0:
            raise ValueError(f"target_class_value must lie in (0, 1) for cross-entropy, got {class_value}")
        n_out = output.shape[1]
        target = torch.full_like(output, (1.0 - class_value) / (n_out - 1))
        target.scatter_(1, y.long().unsqueeze(1), class_value)
        return target, "softmax"
    if loss == "mse":
        if y.shape != output.shape:
            raise ValueError(f"mse expects targets shaped like the output {tuple(output.shape)}, got {tuple(y.shape)}")
        return y.to(output.dtype), "linear"
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def output_target(output: Tensor, y: Tensor, loss: Loss, target_stepsize: float) -> Tensor:
    """r_L* = r_L^- - lambda d(batch-mean loss)/d(r_L), (B, n_L). ``target_stepsize`` is lambda."""
    return output + output_delta(output, y, loss, target_stepsize)
