"""lightning-dfc: Deep Feedback Control (DFC) and Strong-DFC for PyTorch Lightning.

Two layers (docs/architecture.md):

* :mod:`lightning_dfc.core`: pure tensor functions and method objects (dynamics, learning rules,
  targets, diagnostics, settings); imports torch only, never Lightning.
* :mod:`lightning_dfc.shell`: the Lightning layer (module, mixin, callbacks, CLI, data, plots),
  which applies what the core computes.

The Lightning classes (:class:`DFCModule`, :class:`DFCMixin`, :class:`DFCWrapper`) load on first use, so that
``from lightning_dfc import DFC`` (the plain PyTorch door) never imports Lightning.
"""

from .__about__ import __version__
from .core.activations import Activation
from .core.config import FeedbackConfig, SimulationConfig, UpdateConfig, sleep_defaults
from .core.methods import METHODS, Method, register_method, resolve_method
from .core.network import DFCNetwork, LayerParams, MLP
from .core.plain import DFC
from .core.schedule import Phase, PhaseSchedule

__all__ = [
    "__version__", "Activation", "SimulationConfig", "sleep_defaults", "DFCNetwork", "LayerParams", "MLP",
    "DFCModule", "DFCMixin", "DFCWrapper", "PhaseSchedule", "Phase", "FeedbackConfig", "UpdateConfig",
    "METHODS", "Method", "register_method", "resolve_method", "DFC",
]

_LIGHTNING_CLASSES = {"DFCModule": "module", "DFCMixin": "mixin", "DFCWrapper": "wrapper"}


def __getattr__(name: str):
    if name in _LIGHTNING_CLASSES:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.shell.{_LIGHTNING_CLASSES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LIGHTNING_CLASSES))
