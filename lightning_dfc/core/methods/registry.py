"""The method registry: names for :class:`~lightning_dfc.core.methods.base.Method` objects, and
the built-in methods registered under theirs."""

from __future__ import annotations

import dataclasses

from ..targets import StrongTarget
from .base import Method
from .baselines import BP, DFA
from .dfc import DFC, DFCSSA, DFCSteadyState

__all__ = ["METHODS", "register_method", "resolve_method"]

METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method, *, replace: bool = False) -> Method:
    """Register ``method`` under ``name`` (returned with its ``name`` set). Refuses to replace an
    existing entry unless ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method expects a Method instance, got {type(method).__name__}")
    if name in METHODS and not replace:
        raise ValueError(f"a method named {name!r} is already registered; pass replace=True to override it")
    method = dataclasses.replace(method, name=name)
    method.check_composition()
    METHODS[name] = method
    return method


def resolve_method(method: str | Method) -> Method:
    """The registered method of this name (a :class:`Method` passes through)."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown variant {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


_FIXED = {"feedback_init": "weight_product", "train_feedback": False}
for _name, _method in {
    "dfc": DFC(),
    "dfc_ss": DFCSteadyState(),
    "dfc_ssa": DFCSSA(),
    "dfc_fixed": DFC(**_FIXED),
    "dfc_ss_fixed": DFCSteadyState(**_FIXED),
    "dfc_ssa_fixed": DFCSSA(**_FIXED),
    "dfa": DFA(),
    "bp": BP(),
    # Strong-DFC (Meulemans, Tristany Farinha, Cervera et al., ICML 2022): a strong target, plus for
    # the single-phase method the high-pass feedback rule in the wake simulation
    "strong_dfc": DFC(target=StrongTarget(), single_phase=True),
    "strong_dfc_ss": DFCSteadyState(target=StrongTarget()),
}.items():
    register_method(_name, _method)
del _name, _method
