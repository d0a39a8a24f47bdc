"""lightning-dfc: Deep Feedback Control (DFC) and Strong-DFC for PyTorch Lightning.

Two layers (docs/architecture.md):

* :mod:`lightning_dfc.core`: pure tensor functions and method objects (dynamics, learning rules,
  targets, diagnostics, settings); imports torch only, never Lightning.
* :mod:`lightning_dfc.shell`: the Lightning layer (module, mixin, callbacks, CLI, data, plots),
  which applies what the core computes.
"""

import importlib as _importlib
import sys as _sys

from .__about__ import __version__
from .core.activations import Activation
from .core.config import FeedbackConfig, SimulationConfig, UpdateConfig, sleep_defaults
from .core.methods import METHODS, Method, register_method, resolve_method
from .core.network import DFCNetwork, LayerParams, MLP
from .core.plain import DFC
from .core.schedule import Phase, PhaseSchedule
from .shell.mixin import DFCMixin
from .shell.module import DFCModule

VARIANTS = METHODS  # the name this registry had before the method objects (a name -> method mapping)

__all__ = [
    "__version__", "Activation", "SimulationConfig", "sleep_defaults", "DFCNetwork", "LayerParams", "MLP",
    "DFCModule", "DFCMixin", "PhaseSchedule", "Phase", "FeedbackConfig", "UpdateConfig", "VARIANTS",
    "METHODS", "Method", "register_method", "resolve_method", "DFC",
]

# The modules' paths before the core/shell split (``lightning_dfc.dynamics``,
# ``lightning_dfc.callbacks``, ...) stay importable: configs name ``lightning_dfc.data.MNISTDataModule``
# and ``lightning_dfc.callbacks.ConditionMonitor``, and the console script is ``lightning_dfc.cli:main``.
_MOVED = {
    **{name: "core" for name in ("activations", "network", "dynamics", "rules", "diagnostics",
                                 "config", "schedule", "methods", "targets")},
    **{name: "shell" for name in ("mixin", "module", "callbacks", "cli", "data", "plotting", "distributed",
                                  "metrics")},
    "settings": "core",  # merged into core.config
    "control": "core",  # renamed core.control_loss
}
_RENAMED = {"settings": "config", "control": "control_loss"}
for _name, _layer in _MOVED.items():
    _module = _importlib.import_module(f"{__name__}.{_layer}.{_RENAMED.get(_name, _name)}")
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals().setdefault(_name, _module)
del _name, _layer, _module
