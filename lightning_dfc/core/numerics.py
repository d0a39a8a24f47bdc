"""How the simulations are computed, as opposed to what they simulate: the numerics presets.

A :class:`~lightning_dfc.core.config.SimulationConfig` holds the physics (time constants, dt, T,
gains, noise levels) and a few *levers* that only change how it is computed (``dtype``,
``noise``, ``early_stop``, ``tolerance``, ``check_every``, ``outer_every``). A preset sets every
lever a config leaves unset (``None``); one setting switches all of them for a whole run:

* ``exact``: the published numerics, the verification mode. float64, every Euler step, every
  outer product, Gaussian noise drawn per step: the same numbers, noise draw for noise draw, as
  the authors' code (``tests/reference/test_reference.py``).
* ``fast`` (the default): float32 (cancellation-free deviation form), an early stop that adds
  the rest of the trajectory in closed form (:mod:`~lightning_dfc.core.tail`), the O(lambda^2)
  outer products every 10th step, two-point noise increments (the simplified weak Euler scheme),
  DFC's sleep phase linearised and reduced to the output's dimensions (``linear_sleep``).
  Proven to learn like ``exact``: ``tests/core/test_numerics.py``, ``tests/core/test_linear_sleep.py`` and
  ``docs/benchmarks.md``.

    DFCModule(net, numerics="exact")           # Python
    --model.init_args.numerics=exact            # the CLI
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import FeedbackConfig, SimulationConfig

__all__ = ["Numerics", "EXACT", "FAST", "NUMERICS", "DEFAULT_NUMERICS", "resolve_numerics", "LEVERS"]

LEVERS = ("dtype", "noise", "early_stop", "tolerance", "check_every", "outer_every", "linear_sleep")


@dataclass(frozen=True)
class Numerics:
    """A value for every numerics lever of :class:`~lightning_dfc.core.config.SimulationConfig`
    (see there for what each does)."""

    name: str
    dtype: str
    noise: str
    early_stop: bool
    tolerance: float
    check_every: int
    outer_every: int
    linear_sleep: bool = False  # a field after the others: the presets saved in older checkpoints lack it

    def __post_init__(self) -> None:
        SimulationConfig(**{lever: getattr(self, lever) for lever in LEVERS})  # validates the values

    def resolve(self, cfg: SimulationConfig) -> SimulationConfig:
        """``cfg`` with every unset (``None``) lever set to this preset's value."""
        unset = {lever: getattr(self, lever) for lever in LEVERS if getattr(cfg, lever) is None}
        return dataclasses.replace(cfg, **unset) if unset else cfg

    def configure(self, dynamics: SimulationConfig, feedback: FeedbackConfig) -> tuple[SimulationConfig, FeedbackConfig]:
        """A run's wake simulation and feedback settings with this preset's levers filled in."""
        return self.resolve(dynamics), dataclasses.replace(feedback, simulation=self.resolve(feedback.simulation))

    def overridden(self, cfg: SimulationConfig) -> dict[str, object]:
        """The levers ``cfg`` sets itself to a value other than this preset's (for the run summary)."""
        return {lever: getattr(cfg, lever) for lever in LEVERS
                if getattr(cfg, lever) is not None and getattr(cfg, lever) != getattr(self, lever)}


EXACT = Numerics("exact", dtype="float64", noise="gaussian", early_stop=False, tolerance=1e-3, check_every=20,
                 outer_every=1)
FAST = Numerics("fast", dtype="float32", noise="two_point", early_stop=True, tolerance=1e-4, check_every=4,
                outer_every=10, linear_sleep=True)
NUMERICS: dict[str, Numerics] = {"fast": FAST, "exact": EXACT}
DEFAULT_NUMERICS = FAST


def resolve_numerics(value: str | Numerics | dict | None) -> Numerics:
    """The preset of this name (``fast``, ``exact``); a :class:`Numerics` passes through, a dict
    of its fields (a checkpoint's) is built, ``None`` is the default (``fast``)."""
    if value is None:
        return DEFAULT_NUMERICS
    if isinstance(value, Numerics):
        return value
    if isinstance(value, dict):
        return Numerics(**value)
    if value not in NUMERICS:
        raise ValueError(f"unknown numerics {value!r}; choose one of {sorted(NUMERICS)} (exact: the published "
                         "numerics, float64 and every Euler step; fast: the default)")
    return NUMERICS[value]
