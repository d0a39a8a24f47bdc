"""lightning-dfc: Deep Feedback Control (DFC) and Strong-DFC for PyTorch Lightning."""

from .__about__ import __version__
from .activations import Activation
from .config import SimulationConfig, sleep_defaults
from .network import DFCNetwork, LayerParams, MLP

__all__ = ["__version__", "Activation", "SimulationConfig", "sleep_defaults", "DFCNetwork", "LayerParams", "MLP"]
from .module import DFCModule
from .mixin import DFCMixin
from .schedule import PhaseSchedule, Phase
from .settings import FeedbackConfig, UpdateConfig, VARIANTS

__all__ += ["DFCModule", "DFCMixin", "PhaseSchedule", "Phase", "FeedbackConfig", "UpdateConfig", "VARIANTS"]
