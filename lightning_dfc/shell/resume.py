"""What a fit resumed from a checkpoint must match: the DFC settings the checkpoint records, and
the check that names every difference (``old -> new``) and refuses it unless the module opts in
(``resume_with_changes``; ``feedback.resume_with_new_schedule`` for a new schedule alone)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ResumeError", "check_resume", "schedule_record", "settings_record", "flat_settings", "changed_settings",
           "optimizer_settings", "apply_optimizer_changes"]

# settings a resume may change with a notice: they do not change what the run computes
RESUME_NOTICE_ONLY = ("feedback.validate", "feedback.resume_with_new_schedule")
# settings the check compares on their own (variant, network sizes, schedule)
RESUME_CHECKED_APART = ("variant", "network.sizes", "feedback.pretrain_epochs", "feedback.pretrain_until",
                        "feedback.sleep_before", "feedback.sleep_after")


class ResumeError(ValueError):
    """A fit cannot resume from the checkpoint it was given: its settings differ (the message
    names each). The ``lightning-dfc`` command prints it as its error lines, status 2."""


def schedule_record(module: Any) -> dict[str, Any]:
    """A DFC module's schedule as configured (an early end of the pre-training is stored apart)."""
    cfg = module.dfc_feedback_config
    s = cfg.schedule(module.dfc_method.train_feedback)
    return {"pretrain_epochs": s.pretrain_epochs, "pretrain_until": cfg.pretrain_until,
            "sleep_before": s.sleep_before, "sleep_after": s.sleep_after, "train_feedback": s.train_feedback}


def settings_record(module: Any) -> dict[str, Any]:
    """A DFC module's resolved settings, as dotted keys with plain values (what a resume
    compares): variant, loss, lambda, numerics, the network's sizes and activations, and every
    field of the resolved dynamics, feedback and update settings."""
    record: dict[str, Any] = {
        "variant": module.dfc_variant, "loss": module.dfc_loss, "target_stepsize": module.dfc_target_stepsize,
        "numerics": module.dfc_numerics.name, "network.sizes": list(module.dfc_net.sizes),
        "network.activations": [act.name for act in module.dfc_net.activations],
    }
    for prefix, cfg in (("dynamics", module.dfc_dynamics), ("feedback", module.dfc_feedback_config),
                        ("updates", module.dfc_updates)):
        record.update(flat_settings(prefix, dataclasses.asdict(cfg)))
    record.update(getattr(module, "dfc_optimizer_settings", {}))
    return record


# the optimizers' hyperparameters a resume compares (those of torch's optimizers' param groups)
OPTIMIZER_KEYS = ("lr", "betas", "eps", "weight_decay", "momentum", "alpha", "rho")


def optimizer_settings(names: list[str], optimizers: list[Any]) -> dict[str, Any]:
    """``optimizers.<name>.<key>`` of each optimizer as configured (its first param group, before
    any step or restore; the forward lr after the division by lambda), and its class."""
    out: dict[str, Any] = {}
    for name, opt in zip(names, optimizers):
        out[f"optimizers.{name}.type"] = type(opt).__name__
        group = opt.param_groups[0]
        out.update(flat_settings(f"optimizers.{name}", {k: group[k] for k in OPTIMIZER_KEYS if k in group}))
    return out


def apply_optimizer_changes(module: Any, saved: dict[str, Any] | None, optimizers: list[Any]) -> None:
    """After a resume has restored the optimizers' states (their hyperparameters included) from
    the checkpoint: set each hyperparameter configured differently from the checkpoint's run back
    to this run's value, with a notice per setting (``old -> new``)."""
    configured = getattr(module, "dfc_optimizer_settings", {})
    if not configured:  # a host's own configure_optimizers: nothing of ours to compare
        return
    names = [key.split(".")[1] for key in configured if key.endswith(".type")]
    for key, old, new in changed_settings(saved and {k: v for k, v in saved.items() if k.startswith("optimizers.")},
                                          configured):
        rank_zero_info(f"lightning-dfc: resuming with a changed optimizer setting: {key}: {old!r} -> {new!r}")
        _, name, setting = key.split(".", 2)
        if setting in OPTIMIZER_KEYS and name in names and new is not None:
            for group in optimizers[names.index(name)].param_groups:
                group[setting] = tuple(new) if isinstance(group.get(setting), tuple) else new


def flat_settings(prefix: str, value: Any) -> dict[str, Any]:
    """A nested dict of settings as ``prefix.key[.subkey]`` -> plain value (tuples as lists;
    anything but numbers, strings, booleans and None as its ``str``: checkpoint-safe)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_settings(f"{prefix}.{key}", item))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in value]}
    return {prefix: value if isinstance(value, (int, float, str, bool)) or value is None else str(value)}


def changed_settings(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, the checkpoint's value, this run's) for every setting that differs (``saved``
    ``None``: a checkpoint from before settings were recorded, nothing to compare)."""
    if not saved:
        return []
    return [(key, saved.get(key), now.get(key)) for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def check_resume(module: Any, state: dict[str, Any]) -> None:
    """Refuse to resume ``module``'s fit from a checkpoint (its ``dfc`` state) of another variant,
    network or schedule, or with other settings: each changed setting is named (``old -> new``),
    and allowed with ``resume_with_changes`` (a new schedule also with
    ``feedback.resume_with_new_schedule``; other network sizes never: the weights would not fit).

    Raises:
        ResumeError: naming every difference and the ways out.
    """
    opted_in = module.dfc_resume_with_changes
    differences = []
    if "variant" in state and state["variant"] != module.dfc_variant and not opted_in:
        differences.append(f"variant {state['variant']!r} (now {module.dfc_variant!r})")
    if "sizes" in state and list(state["sizes"]) != list(module.dfc_net.sizes):
        differences.append(f"network sizes {state['sizes']} (now {list(module.dfc_net.sizes)})")
    schedule = schedule_record(module)
    changed = {k: v for k, v in state.get("schedule", {}).items() if schedule.get(k) != v}
    if changed and not (module.dfc_feedback_config.resume_with_new_schedule or opted_in):
        differences.append("schedule " + ", ".join(f"{k}={v} (now {schedule[k]})" for k, v in changed.items()))
    # the optimizers are compared once their states are restored (apply_optimizer_changes)
    settings = [c for c in changed_settings(state.get("settings"), settings_record(module))
                if not c[0].startswith("optimizers.")]
    refused = [c for c in settings if c[0] not in RESUME_NOTICE_ONLY and c[0] not in RESUME_CHECKED_APART]
    if differences or (refused and not opted_in):
        lines = "" if opted_in else "".join(f"\n  {key}: {old!r} -> {new!r}" for key, old, new in refused)
        raise ResumeError(
            "cannot resume training from this checkpoint: "
            + ("it was trained with " + "; ".join(differences) + ". " if differences else "")
            + (f"these settings differ from the checkpoint's (old -> new):{lines}\n" if lines else "")
            + "Resume with the checkpoint's settings, or start a new run (fit without --ckpt_path)"
            + (". A new schedule is accepted with feedback.resume_with_new_schedule: true (past epochs "
               "keep the phases they ran)" if changed else "")
            + ("" if not (refused or changed) else ", or pass resume_with_changes: true "
               "(--model.init_args.resume_with_changes=true) to resume with the new settings") + "."
        )
    for key, old, new in settings:
        if key in RESUME_NOTICE_ONLY or opted_in:
            rank_zero_info(f"lightning-dfc: resuming with a changed setting: {key}: {old!r} -> {new!r}")
