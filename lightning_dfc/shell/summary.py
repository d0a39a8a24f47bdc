"""The end-of-fit summary of a DFC run: best checkpoint and score (with the wake epoch it came
from), wall time per phase, skipped batches, and the commands to test and plot the run."""

from __future__ import annotations

import importlib.util
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .epochs import plural

__all__ = ["PhaseClock", "fit_summary"]

LOW_CONDITION_2 = 0.95  # below it the summary points to feedback.pretrain_until


class PhaseClock:
    """Wall time per phase (``pretrain``, ``sleep``, ``wake``), summed over epochs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.epochs: dict[str, int] = defaultdict(int)
        self._started: tuple[str, float] | None = None

    def start(self, phase: str) -> None:
        self._started = (phase, time.perf_counter())

    def stop(self) -> None:
        if self._started is not None:
            phase, t0 = self._started
            self.seconds[phase] += time.perf_counter() - t0
            self.epochs[phase] += 1
            self._started = None


def _wake_epoch_of(path: str, schedule) -> int | None:
    """The 1-based wake epoch a checkpoint named ``wake_epoch=K`` (the default name) or
    ``...epoch=N...`` (Lightning's epoch, a filename of the user's) was saved in (``None``: unknown)."""
    name = Path(path).name
    wake = re.search(r"wake_epoch=(\d+)", name)
    if wake:
        return int(wake.group(1)) or None
    match = re.search(r"(?<![a-z_])epoch=(\d+)", name)
    if not match:
        return None
    info = schedule(int(match.group(1)))
    return info.forward_epoch + 1 if info.forward_epoch >= 0 else None


def _pretraining_line(module: Any) -> str | None:
    """How far the feedback pre-training aligned the feedback weights (Condition 2)."""
    value = getattr(module, "_dfc_pretrain_condition_2", None)
    if value is None:
        return None
    cfg = module.dfc_feedback_config
    epochs = module.dfc_schedule.pretrain_epochs
    line = f"  feedback pre-training: {plural(epochs, 'epoch')}, Condition 2 = {value:.3f}"
    if cfg.pretrain_until is not None:
        reached = "reached" if value >= cfg.pretrain_until else "not reached"
        line += f" (pretrain_until {cfg.pretrain_until:g} {reached}, at most {plural(cfg.pretrain_epochs, 'epoch')})"
    elif getattr(getattr(module, "dfc_method", None), "strong", False):
        line += " (strong feedback does not need Condition 2: Strong-DFC's pre-training only stabilises the controller)"
    elif value < LOW_CONDITION_2:
        line += (f" (below {LOW_CONDITION_2}: the feedback weights are far from aligned; "
                 "see feedback.pretrain_until in docs/user_guide.md)")
    return line


def numerics_line(module: Any) -> str:
    """The run's numerics preset and the levers set by hand against it (``docs/numerics.md``)."""
    overrides = getattr(module, "dfc_numerics_overrides", {})
    by_hand = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"  numerics: {module.dfc_numerics.name}" + (f" (set by hand: {by_hand})" if by_hand else "")


def sleep_simulation_line(module: Any) -> str | None:
    """How the sleep epochs simulate (``None`` without them): linearised and reduced to the
    output's dimensions (the fast numerics' ``linear_sleep``), or the whole network, and why."""
    from ..core.dynamics import resolve_levers
    from ..core.linear_sleep import linear_sleep_applies
    from ..core.targets import HoldOutput

    method, feedback = module.dfc_method, module.dfc_feedback_config
    if not (method.simulates and method.train_feedback) or method.single_phase:
        return None
    cfg = resolve_levers(feedback.simulation)
    target = method.sleep_target(module.dfc_settings, pretraining=False)
    rate = method.feedback_rule(module.dfc_settings, pretraining=False).highpass_rate(cfg)
    why = linear_sleep_applies(cfg, rate, isinstance(target, HoldOutput), module.dfc_net.sizes[-1])
    if why is None:
        return "  sleep phase: linearised, reduced to the output's dimensions (linear_sleep, docs/numerics.md)"
    return f"  sleep phase: the whole network simulated ({why})"


def fit_summary(trainer: Any, module: Any, clock: PhaseClock, skipped: dict[str, int],
                log_dir: str | None = None) -> list[str]:
    """The summary's lines (printed by the module at the end of ``fit``). ``log_dir``: the
    trainer's (``trainer.log_dir`` is a collective under DDP: every rank reads it, rank 0 prints)."""
    lines = ["lightning-dfc: fit finished."]
    if trainer.fast_dev_run:
        n = int(trainer.fast_dev_run)
        steps = "a sleep and a wake step each" if module.dfc_method.train_feedback else "a wake step each"
        lines.append(f"  fast_dev_run: {plural(n, 'training batch', 'training batches')} ({steps}) and up to "
                     f"{plural(n, 'validation batch', 'validation batches')}; nothing logged")
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    if best:
        score = ckpt.best_model_score
        wake = _wake_epoch_of(best, module.dfc_schedule)
        where = f" (wake epoch {wake})" if wake is not None else ""
        value = f"{ckpt.monitor} = {float(score):.4f}{where}, " if ckpt.monitor and score is not None else ""
        lines.append(f"  best checkpoint: {value}{best}")
    elif ckpt is not None and getattr(ckpt, "last_model_path", ""):
        lines.append(f"  last checkpoint: {ckpt.last_model_path}")
    times = ", ".join(f"{phase} {clock.seconds[phase]:.1f} s ({plural(clock.epochs[phase], 'epoch')})"
                      for phase in ("pretrain", "sleep", "wake") if clock.epochs.get(phase))
    if times:
        lines.append(f"  wall time: {times}")
    pretraining = _pretraining_line(module)
    if pretraining:
        lines.append(pretraining)
    lines.append(f"  skipped batches (diverged): wake {skipped.get('wake', 0)}, sleep {skipped.get('sleep', 0)}")
    lines.append(numerics_line(module))
    sleep = sleep_simulation_line(module)
    if sleep:
        lines.append(sleep)
    if best or log_dir:
        config = f" --config {Path(log_dir) / 'config.yaml'}" if log_dir and (Path(log_dir) / "config.yaml").is_file() else ""
        if best and config:
            lines.append(f"  test it:   lightning-dfc test{config} --ckpt_path {best}")
        elif best:  # a fit from Python: no config.yaml for the command line to rebuild the run from
            lines.append(f"  test it:   trainer.test(model, datamodule=..., ckpt_path={str(best)!r})")
        if log_dir:
            hint = "" if importlib.util.find_spec("matplotlib") else "  (needs: pip install lightning-dfc[plots])"
            lines.append(f"  plot it:   lightning-dfc plot {log_dir} --output {Path(log_dir) / 'curves'}{hint}")
    return lines
