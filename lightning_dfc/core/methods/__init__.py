"""Learning methods and their registry.

A method is a :class:`Method` object (its forward rule, its target, how its feedback weights are
initialised and learned); the registry names them, the way Lightning resolves strategy names:
``DFCModule(variant="dfc_ss_fixed")`` trains with ``resolve_method("dfc_ss_fixed")``.

Adding a method is one file with a :class:`Method` subclass and one registry entry
(``register_method("my_method", MyMethod())``); see ``docs/architecture.md``.
"""

from __future__ import annotations

from .base import Method, UpdateSettings
from .baselines import BP, DFA
from .dfc import DFC, DFCSSA, DFCSteadyState
from .functional import forward_update
from .registry import METHODS, register_method, resolve_method

__all__ = ["Method", "UpdateSettings", "DFC", "DFCSteadyState", "DFCSSA", "DFA", "BP", "METHODS",
           "register_method", "resolve_method", "forward_update"]
