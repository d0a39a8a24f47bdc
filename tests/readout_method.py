"""A test-only learning method, added the way the architecture docs describe: this one file with a
:class:`~lightning_dfc.core.methods.Method` subclass, and one registry entry (the last line).

``readout`` trains the output layer only, with the delta rule on the last hidden rates (the
random-features baseline); the hidden layers keep their initial weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_dfc import Method, register_method
from lightning_dfc.core.rules import Update
from lightning_dfc.core.losses import loss_gradient


@dataclass(frozen=True)
class Readout(Method):
    """dW_L = (phi_L'(v_L) * dL/dr_L)^T r_{L-1} (gradient sign); every other update is zero."""

    train_feedback: bool = False
    rule = "readout"
    simulates = False  # no controller: the Condition monitors skip their controller metrics

    def compute_forward_update(self, params, x, y, ff, control, settings):
        signal = params.activations[-1].derivative(ff.v[-1]) * loss_gradient(ff.r[-1], y, settings.loss)
        pre = ff.r[-2] if params.num_layers > 1 else x
        weights = [torch.zeros_like(w) for w in params.weights[:-1]] + [signal.T @ pre]
        biases = [None if b is None else torch.zeros_like(b) for b in params.biases[:-1]]
        biases.append(None if params.biases[-1] is None else signal.sum(0))
        return Update(weights, biases, {"steps": 0.0})


register_method("readout", Readout(), replace=True)
