"""The network wrapper: a user's stack of ``nn.Linear`` + activations as a DFC network.

:class:`DFCNetwork` shares the user's ``nn.Linear`` parameters (no copies: after training the
user's own ``nn.Sequential`` is the trained network) and owns the feedback weights Q_i.
:class:`LayerParams` is the plain-tensor view the functional core works on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .activations import SUPPORTED_ACTIVATIONS, Activation, activation_from_module

__all__ = ["DFCNetwork", "LayerParams", "MLP", "FEEDBACK_INITS"]

FEEDBACK_INITS = ("xavier_normal", "weight_product")


class LayerParams(NamedTuple):
    """Plain tensors of an L-layer network, as the functional core uses them.

    Attributes:
        weights: W_i, shape ``(n_i, n_{i-1})``, i = 1..L.
        biases: b_i, shape ``(n_i,)``, or ``None`` for a layer without bias.
        activations: phi_i (the output layer's is usually linear).
        feedback: Q_i, shape ``(n_i, n_L)``.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]
    activations: tuple[Activation, ...]
    feedback: tuple[Tensor, ...]

    @property
    def sizes(self) -> list[int]:
        """[n_0, n_1, ..., n_L]."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def to_dtype(self, dtype: torch.dtype) -> LayerParams:
        """The same tensors cast to ``dtype`` (itself when they already are)."""
        if self.weights[0].dtype == dtype:
            return self
        return self._replace(weights=tuple(w.to(dtype) for w in self.weights),
                             biases=tuple(None if b is None else b.to(dtype) for b in self.biases),
                             feedback=tuple(q.to(dtype) for q in self.feedback))


class MLP(nn.Sequential):
    """A plain multilayer perceptron, initialised as in the DFC paper.

    ``Linear -> act -> ... -> Linear`` (linear output), Xavier-normal weights, zero biases.

    Args:
        sizes: layer widths ``[n_0, n_1, ..., n_L]`` (at least input and output).
        activation: hidden activation: ``tanh``, ``relu``, ``leaky_relu``, ``sigmoid`` or ``linear``;
            or a list with one name per hidden layer (e.g. a linear autoencoder bottleneck:
            ``[tanh, linear, tanh]`` for 784-256-32-256-784).
        output_activation: activation of the output layer (``linear`` for classification with
            softmax absorbed into the loss, and for regression/autoencoders).
        bias: whether the layers have biases.
        init_gain: gain of the Xavier-normal initialisation.
        flatten: prepend ``nn.Flatten`` (for image tensors of shape ``(B, 1, 28, 28)``).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | list[str] = "tanh",
        output_activation: str = "linear",
        bias: bool = True,
        init_gain: float = 1.0,
        flatten: bool = False,
    ) -> None:
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"MLP: sizes must list at least two positive widths, got {list(sizes)}")
        hidden = [activation] * (len(sizes) - 2) if isinstance(activation, str) else list(activation)
        if len(hidden) != len(sizes) - 2:
            raise ValueError(
                f"MLP: {len(sizes) - 2} hidden layers need {len(sizes) - 2} activations, got {len(hidden)}"
            )
        modules: list[nn.Module] = [nn.Flatten()] if flatten else []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(int(n_in), int(n_out), bias=bias)
            nn.init.xavier_normal_(linear.weight, gain=init_gain)
            if bias:
                nn.init.zeros_(linear.bias)
            modules.append(linear)
            last = i == len(sizes) - 2
            modules.append(_activation_module(output_activation if last else hidden[i]))
        super().__init__(*modules)


def _activation_module(name: str) -> nn.Module:
    table = {
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),
        "sigmoid": nn.Sigmoid,
        "linear": nn.Identity,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


def _flatten_modules(network: nn.Module | Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    if isinstance(network, nn.Sequential):
        items: list[tuple[str, nn.Module]] = []
        for name, child in network.named_children():
            if isinstance(child, nn.Sequential):
                items += [(f"{name}.{n}", m) for n, m in _flatten_modules(child)]
            else:
                items.append((name, child))
        return items
    if isinstance(network, nn.Module):
        return [("", network)]
    return [(str(i), m) for i, m in enumerate(network)]


def _unsupported(name: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"cannot build a DFC network: module {name or '<root>'!r} ({type(module).__name__}) {why}. "
        "Supported: an optional leading nn.Flatten, then nn.Linear layers each optionally followed "
        f"by one elementwise activation ({', '.join('nn.' + a for a in SUPPORTED_ACTIVATIONS)}); "
        "the last nn.Linear is the output layer."
    )


def parse_layers(
    network: nn.Module | Sequence[nn.Module],
) -> tuple[bool, list[nn.Linear], list[Activation]]:
    """Split a module stack into (leading flatten?, linear layers, activations).

    Raises:
        ValueError: naming the offending module when the stack is not Linear + activations.
    """
    items = _flatten_modules(network)
    flatten = False
    linears: list[nn.Linear] = []
    activations: list[Activation | None] = []
    for position, (name, module) in enumerate(items):
        if isinstance(module, nn.Flatten):
            if position != 0:
                raise _unsupported(name, module, "is only supported as the first module")
            flatten = True
        elif isinstance(module, nn.Linear):
            if linears and module.in_features != linears[-1].out_features:
                raise _unsupported(
                    name,
                    module,
                    f"expects {module.in_features} inputs but the previous layer has "
                    f"{linears[-1].out_features} outputs",
                )
            linears.append(module)
            activations.append(None)
        else:
            act = activation_from_module(module)
            if act is None:
                raise _unsupported(name, module, "is not supported")
            if not linears:
                raise _unsupported(name, module, "comes before the first nn.Linear")
            if activations[-1] is not None:
                raise _unsupported(name, module, "is a second activation after the same nn.Linear")
            activations[-1] = act
    if not linears:
        raise ValueError("cannot build a DFC network: the module stack contains no nn.Linear layer")
    return flatten, linears, [a or Activation("linear") for a in activations]


class DFCNetwork(nn.Module):
    """A stack of ``nn.Linear`` + elementwise activations with DFC feedback weights.

    Args:
        network: the user's ``nn.Sequential`` (or list of modules). Its parameters are shared,
            not copied: ``network(x)`` stays the trained network's forward pass.
        feedback_init: ``"xavier_normal"`` (random Q_i, for trained feedback) or
            ``"weight_product"`` (Q_i = W_{i+1}^T ... W_L^T, for the fixed-feedback variants).
        freeze_output_feedback: keep Q_L = I out of feedback training.

    Shapes: input ``(B, n_0)`` (or anything ``nn.Flatten`` turns into it), output ``(B, n_L)``.
    """

    def __init__(
        self,
        network: nn.Module | Sequence[nn.Module],
        feedback_init: str = "xavier_normal",
        freeze_output_feedback: bool = False,
    ) -> None:
        super().__init__()
        if feedback_init not in FEEDBACK_INITS:
            raise ValueError(
                f"feedback_init must be one of {FEEDBACK_INITS}, got {feedback_init!r}"
            )
        if not isinstance(network, nn.Module):
            network = nn.Sequential(*network)
        self.flatten, linears, self.activations = parse_layers(network)
        self.network = network
        self.layers = linears  # plain list: the parameters are registered through self.network
        self.feedback_init = feedback_init
        self.freeze_output_feedback = freeze_output_feedback
        p = linears[0].weight
        self.feedback = nn.ParameterList(
            nn.Parameter(torch.zeros(lin.out_features, self.sizes[-1], dtype=p.dtype, device=p.device),
                         requires_grad=False)
            for lin in linears
        )
        self.reset_feedback(feedback_init)

    @property
    def sizes(self) -> list[int]:
        """[n_0, ..., n_L]."""
        return [self.layers[0].in_features] + [lin.out_features for lin in self.layers]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward_parameters(self) -> list[nn.Parameter]:
        """W_1, b_1, ..., W_L, b_L (biases only where present), in layer order."""
        return [p for lin in self.layers for p in (lin.weight, lin.bias) if p is not None]

    def trainable_feedback(self) -> list[nn.Parameter]:
        """The Q_i trained in sleep phases (Q_L excluded when ``freeze_output_feedback``)."""
        qs = list(self.feedback)
        return qs[:-1] if self.freeze_output_feedback else qs

    @torch.no_grad()
    def reset_feedback(self, init: str | None = None) -> None:
        """(Re)initialise Q_1..Q_{L-1} with ``init``; Q_L is the identity."""
        init = init or self.feedback_init
        for i, q in enumerate(self.feedback[:-1]):
            if init == "xavier_normal":
                nn.init.xavier_normal_(q)
            else:
                product = self.layers[-1].weight.T
                for lin in reversed(self.layers[i + 1 : -1]):
                    product = lin.weight.T @ product
                q.copy_(product)
        out = self.feedback[-1]
        out.copy_(torch.eye(self.sizes[-1], dtype=out.dtype, device=out.device))

    def params(self) -> LayerParams:
        """Detached views (no copies) of all tensors for the functional core."""
        return LayerParams(
            weights=tuple(lin.weight.detach() for lin in self.layers),
            biases=tuple(None if lin.bias is None else lin.bias.detach() for lin in self.layers),
            activations=tuple(self.activations),
            feedback=tuple(q.detach() for q in self.feedback),
        )

    def prepare_input(self, x: Tensor) -> Tensor:
        """Apply the leading ``nn.Flatten`` (if any) and check the feature size.

        Raises:
            ValueError: if the input does not have ``n_0`` features.
        """
        if self.flatten:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match the network: expected (batch, "
                f"{self.sizes[0]}){' after nn.Flatten' if self.flatten else ''}"
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The user's network's plain forward pass."""
        return self.network(x)
