"""Hyperparameters of the controlled network dynamics, as validated dataclasses.

Time is measured in units of the controller time constant tau_u (= 1), as in the paper and the
reference code. The same dataclass describes the forward-weight (wake) simulation and the
feedback-weight (sleep) simulation; :func:`sleep_defaults` gives the sleep phase's values of the
paper's MNIST configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SimulationConfig", "sleep_defaults"]

DTYPES = (None, "float32", "float64")


@dataclass
class SimulationConfig:
    """One simulation of the network (eq. 1) and the leaky PI controller (eq. 4).

    Args:
        dt: Euler step (units of tau_u). Must not exceed ``tau_v`` or ``tau_apical``.
        steps: number of stored time points T (T - 1 Euler steps; the reference's ``tmax_di``).
        k_p: proportional gain of the controller (0: pure leaky integral control).
        alpha: leak of the controller, acting on the total control signal u.
        tau_v: somatic time constant (the reference's ``time_constant_ratio``).
        tau_apical: time constant of the feedback (apical) compartment; ``None`` means ``dt``,
            i.e. the apical voltage equals Q u instantly (the reference default).
        proactive: the layers see the control signal of the same step, u[t+1] (reference
            ``proactive_controller``); otherwise u[t].
        inst_transmission: layer i's basal input uses layer i-1's rate of the same step.
        sigma: std of the white noise entering the apical compartment of hidden layers
            (Euler-Maruyama: ``+ sigma * sqrt(dt) / tau_apical * N(0, 1)``). 0 disables noise.
        sigma_output: the same for the output layer; ``None`` means ``sigma``.
        tau_noise: low-pass filter the noise (Strong-DFC): each layer's noise is
            n <- (1 - dt/tau_noise) n + (dt/tau_noise) / sqrt(dt) * N(0, 1), and sigma * n is
            added to the apical voltage. ``None``: white noise as above.
        early_stop: stop simulating once the dynamics have settled and add the remaining steps'
            contribution to time-averaged updates exactly (noise-free simulations only).
            ``None`` (default): the update decides: on for the continuous DFC update (a
            time average), off for the steady-state updates (DFC-SS, Strong-DFC two-phase), which
            use the final state: an early stop leaves it short of the steady state (about 5 % of
            the update's norm with the Strong-DFC settings), and the authors simulate every step.
        tolerance: settled when, for every sample, the per-step relative change of the control
            signal u and of the voltage deviation v - v_ff (measured over ``check_every``
            steps) is below this.
        check_every: how often (in steps) the convergence test runs.
        compile: run each layer's element-wise step of a float32 (deviation-form) simulation
            through ``torch.compile`` (fuses about 25 element-wise passes into one kernel; the
            first call compiles for tens of seconds, see ``docs/benchmarks.md`` for when it
            wins). float64 simulations use the absolute form, which has few passes to fuse.
        outer_every: the DFC update's presynaptic sum splits exactly into a first-order part
            (accumulated every step) and an O(lambda^2) part s_i (r_{i-1} - r^-_{i-1})^T, which
            is accumulated every ``outer_every`` steps (rectangle rule). 1 = every step (exact).
            The split assumes a small nudge and smooth dynamics: noisy simulations and strong
            targets always use 1.
        dtype: simulate in this dtype (``"float32"`` or ``"float64"``) whatever the network's;
            the results come back in the network's dtype. ``None`` (default): the network's
            dtype. ``"float32"`` in a float64 model is the fast path for noisy simulations (sleep
            phases, Strong-DFC single phase): 2-3x faster per pass on a CPU (``docs/performance.md``), and the same
            distribution of updates (the deviation form keeps float32 accurate, see
            ``docs/concepts.md`` section 8), but not the same numbers per noise draw as a
            float64 simulation, so not bit-equal to the authors' float64 runs.
    """

    dt: float = 0.02
    steps: int = 1000
    k_p: float = 2.0
    alpha: float = 1.389e-3
    tau_v: float = 0.2
    tau_apical: float | None = None
    proactive: bool = True
    inst_transmission: bool = True
    sigma: float = 0.0
    sigma_output: float | None = None
    tau_noise: float | None = None
    early_stop: bool | None = None
    tolerance: float = 3e-4
    check_every: int = 20
    outer_every: int = 10
    compile: bool = False
    dtype: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SimulationConfig: {msg}")

        for name in ("dt", "tau_v", "tolerance"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive number, got {value!r}")
        need(
            isinstance(self.steps, int) and self.steps >= 2,
            f"steps must be an integer >= 2 (number of time points T), got {self.steps!r}",
        )
        need(
            isinstance(self.check_every, int) and self.check_every >= 1,
            f"check_every must be a positive integer, got {self.check_every!r}",
        )
        need(
            isinstance(self.outer_every, int) and self.outer_every >= 1,
            f"outer_every must be a positive integer, got {self.outer_every!r}",
        )
        need(
            self.dtype in DTYPES,
            f"dtype must be one of {sorted(d for d in DTYPES if d)} or None (the network's), got {self.dtype!r}",
        )
        for name in ("k_p", "alpha", "sigma"):
            value = getattr(self, name)
            need(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value!r}")
        if self.sigma_output is not None:
            need(self.sigma_output >= 0, f"sigma_output must be >= 0, got {self.sigma_output!r}")
        need(
            self.dt <= self.tau_v,
            f"dt={self.dt} is larger than the somatic time constant tau_v={self.tau_v}: the Euler "
            "scheme would overshoot. Use a smaller dt or a larger tau_v.",
        )
        if self.tau_noise is not None:
            need(
                math.isfinite(self.tau_noise) and self.tau_noise >= self.dt,
                f"tau_noise must be >= dt={self.dt} (or None for white noise), got {self.tau_noise!r}",
            )
        if self.tau_apical is not None:
            need(self.tau_apical > 0, f"tau_apical must be positive or None, got {self.tau_apical!r}")
            need(
                self.dt <= self.tau_apical,
                f"dt={self.dt} is larger than the apical time constant tau_apical="
                f"{self.tau_apical}. Use a smaller dt, a larger tau_apical, or None (= dt).",
            )

    @property
    def apical_rate(self) -> float:
        """dt / tau_apical (1.0 means the apical compartment follows Q u instantly)."""
        return 1.0 if self.tau_apical is None else self.dt / self.tau_apical

    @property
    def noisy(self) -> bool:
        """Whether any noise enters the dynamics."""
        return self.sigma > 0 or (self.sigma_output or 0.0) > 0

    @property
    def output_sigma(self) -> float:
        return self.sigma if self.sigma_output is None else self.sigma_output


def sleep_defaults() -> SimulationConfig:
    """Sleep-phase simulation of the paper's MNIST configuration (trained feedback).

    Non-proactive (the reference never passes ``proactive`` to the sleep controller), noisy,
    short (T = 48), with its own leak, gain and time constants.
    """
    return SimulationConfig(
        dt=2.030e-3,
        steps=48,
        k_p=0.1565,
        alpha=0.6134,
        tau_v=6.303e-3,
        tau_apical=0.3247,
        proactive=False,
        inst_transmission=True,
        sigma=1.524e-3,
        sigma_output=None,
        early_stop=False,
    )
