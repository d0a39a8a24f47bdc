"""The authors' configurations in this project's terms.

A config as the authors' own argument parser leaves it (deep_feedback_control's
``utils/args.py``, strong_dfc's ``dfc/utils/args.py``, after their post-processing; a plain dict)
is mapped to the keyword arguments of :class:`lightning_dfc.DFCModule`. One mapping serves three
users, so that it is checked from three sides:

* ``tests/reference/test_reference.py`` configures our side of every reference case with it, so every
  field it sets is checked numerically against the authors' code;
* ``tests/reference/audit_configs.py`` maps every published command and config with it;
* ``tests/reference/test_published_configs.py`` compares the example configs with that table.

Settings our library does not implement raise ``NotImplementedError`` naming them, instead of
being dropped silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dfc_paper_settings", "strong_dfc_settings", "network_settings"]

ADAM = "torch.optim.Adam"
# The authors' numerics: float64, every Euler step, every step's outer product, Gaussian noise
# drawn per step (lightning_dfc.core.numerics). The library's default, fast, is proven to learn
# the same (tests/core/test_numerics.py) but does not compute the same numbers.
NUMERICS = "exact"
SGD = "torch.optim.SGD"


def _one(value: Any, name: str) -> float:
    """A scalar from a value the parsers may leave as a one-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise NotImplementedError(f"{name}: per-layer values ({value}) are not supported")
        value = value[0]
    return float(value)


def _refuse(config: dict[str, Any], checks: dict[str, Any]) -> None:
    """Raise for settings that differ from the value we implement."""
    for key, supported in checks.items():
        if key in config and config[key] != supported:
            raise NotImplementedError(f"{key}={config[key]!r} is not supported (only {supported!r})")


def _tau_apical(value: float, dt: float) -> float | None:
    return None if value == -1 or value == dt else float(value)


def network_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``lightning_dfc.MLP`` arguments: sizes and hidden activations (linear output)."""
    hidden = config["size_hidden"]
    hidden = [hidden] * config.get("num_hidden", 1) if isinstance(hidden, int) else list(hidden)
    n_in = config.get("size_input", 784)
    n_out = config.get("size_output", 10)
    activation = config["hidden_activation"]
    if isinstance(activation, (list, tuple)):
        activation = list(activation)
    elif isinstance(activation, str) and "," in activation:
        activation = activation.split(",")
    return {"sizes": [n_in, *hidden, n_out], "activation": activation, "output_activation": "linear",
            "bias": not config.get("no_bias", False)}


def _adam_or_sgd(kind: str, lr: float, betas: tuple[float, float], eps: float | None, momentum: float,
                 weight_decay: float = 0.0) -> dict[str, Any]:
    if kind == "Adam":
        args: dict[str, Any] = {"lr": lr, "betas": [float(betas[0]), float(betas[1])], "eps": eps}
        if weight_decay:
            args["weight_decay"] = float(weight_decay)
        return {"class_path": ADAM, "init_args": args}
    if kind == "SGD":
        args = {"lr": lr}
        if momentum:
            args["momentum"] = float(momentum)
        if weight_decay:
            args["weight_decay"] = float(weight_decay)
        return {"class_path": SGD, "init_args": args}
    raise NotImplementedError(f"optimizer {kind!r} is not supported")


# ---------------------------------------------------------------------------------------------
# meulemansalex/deep_feedback_control (the DFC paper)


def dfc_paper_settings(c: dict[str, Any]) -> dict[str, Any]:
    """DFCModule keyword arguments (all but ``network``) for a deep_feedback_control config.

    The learning rate is given raw with ``normalize_lr`` (their parser has already divided it by
    the target stepsize; we divide it again in ``configure_optimizers``)."""
    _refuse(c, {"inst_system_dynamics": False, "fb_learning_rule": "normal_controller", "use_homeostatic_wd_fb": False,
                "use_initial_activations": False, "noise_K": 0.0, "fix_grad_norm": -1, "reset_K": False,
                "extra_fb_minibatches": 0, "only_train_first_layer": False, "freeze_forward_weights": False,
                "shallow_training": False, "train_only_feedback_parameters": False, "no_val_set": False})
    network_type = c["network_type"]
    loss = "cross_entropy" if c["dataset"] in ("mnist", "fashion_mnist", "cifar10") else "mse"
    lam = float(c["target_stepsize"])
    raw_lr = _one(c["lr"], "lr") * (lam if c["normalize_lr"] else 1.0)
    settings: dict[str, Any] = {
        "numerics": NUMERICS,
        "loss": loss,
        "target_stepsize": lam,
        "forward_optimizer": _adam_or_sgd(c["optimizer"], raw_lr, (c["beta1"], c["beta2"]),
                                          _one(c["epsilon"], "epsilon"), c["momentum"], c["forward_wd"]),
    }
    updates: dict[str, Any] = {"normalize_lr": bool(c["normalize_lr"]), "learning_rule": c["learning_rule"]}
    clip = float(c["clip_grad_norm"])
    if network_type == "BP":  # train_bp: no clipping
        settings["variant"] = "bp"
        settings["updates"] = {**updates, "clip_norm": None}
        return settings
    if network_type == "DFA":  # direct_feedback_layers.py: a hard-coded clip of each tensor to 1
        settings["variant"] = "dfa"
        settings["updates"] = {**updates, "clip_norm": 1.0, "clip_grouping": "tensor"}
        return settings
    if network_type != "DFC":
        raise NotImplementedError(f"network_type {network_type!r}")
    kind = "dfc_ssa" if c["ndi"] else ("dfc" if c["grad_deltav_cont"] else "dfc_ss")
    fixed = bool(c["freeze_fb_weights"])
    if fixed != (c["initialization_K"] == "weight_product"):
        raise NotImplementedError("frozen feedback with a random Q (or trained feedback starting at the weight "
                                  "product) has no variant")
    if kind == "dfc" and c["efficient_controller"]:
        raise NotImplementedError("the efficient controller's continuous update (zeroes only diverged samples)")
    settings["variant"] = kind + ("_fixed" if fixed else "")
    dt = float(c["dt_di"])
    settings["dynamics"] = {
        "dt": dt, "steps": int(c["tmax_di"]), "k_p": float(c["k_p"]), "alpha": float(c["alpha_di"]),
        "tau_v": float(c["time_constant_ratio"]), "tau_apical": _tau_apical(c["apical_time_constant"], dt),
        "proactive": bool(c["proactive_controller"]), "inst_transmission": bool(c["inst_transmission"]),
        "sigma": float(c["sigma"]) if c["noisy_dynamics"] else 0.0,
    }
    settings["updates"] = {
        **updates,
        "clip_norm": clip if clip > 0 else None,
        "clip_grouping": "tensor",  # tpdi_layers.py: W_i and b_i clipped separately
        "exclude_non_converged": not c["include_non_converged_samples"],
        "convergence_epsilon": float(c["epsilon_di"]),
    }
    if fixed:
        return settings
    sigma, sigma_out = float(c["sigma_fb"]), float(c["sigma_output_fb"])
    if max(sigma, 0.01) != max(sigma_out, 0.01):
        # their sleep rule scales every Q_i by 1/sigma_fb^2; ours uses sigma_output for Q_L
        raise NotImplementedError("sigma_output_fb != sigma_fb above the 0.01 floor")
    dt_fb = float(c["dt_di_fb"])
    settings["feedback"] = {
        "pretrain_epochs": int(c["epochs_fb"]),
        "pretrain_until": None,  # a fixed number of pre-training epochs
        "sleep_before": 1,
        "sleep_after": int(c["extra_fb_epochs"]),
        "weight_decay": float(c["feedback_wd"]),
        "freeze_output": bool(c["freeze_fb_weights_output"]),
        "clip_norm": clip if clip > 0 else None,
        "clip_grouping": "all",  # train.py: one norm over every Q_i's update
        "simulation": {
            "dt": dt_fb, "steps": int(c["tmax_di_fb"]), "k_p": float(c["k_p_fb"]), "alpha": float(c["alpha_fb"]),
            "tau_v": float(c["time_constant_ratio_fb"]),
            "tau_apical": _tau_apical(c["apical_time_constant_fb"], dt_fb),
            "proactive": False,  # compute_feedback_gradients_normal_controller never passes it
            "inst_transmission": bool(c["inst_transmission_fb"]),
            "sigma": sigma, "sigma_output": None if sigma_out == sigma else sigma_out,
        },
    }
    fb_betas = (c["beta1_fb"], c["beta2_fb"])
    eps_fb = _one(c["epsilon_fb"], "epsilon_fb")
    settings["feedback_optimizer"] = _adam_or_sgd(c["optimizer_fb"], _one(c["lr_fb"], "lr_fb"), fb_betas, eps_fb, 0.0)
    settings["pretrain_optimizer"] = _adam_or_sgd(c["optimizer_fb"], _one(c["lr_fb_init"], "lr_fb_init"), fb_betas,
                                                  eps_fb, 0.0)
    return settings


# ---------------------------------------------------------------------------------------------
# mariacer/strong_dfc (the Strong-DFC paper; also DFC, BP and DFA)


def strong_dfc_settings(c: dict[str, Any], network_type: str) -> dict[str, Any]:
    """DFCModule keyword arguments (all but ``network``) for a strong_dfc config.

    ``network_type``: the script's (``run_dfc.py``: ``DFC``, ``run_dfc_single_phase.py``:
    ``DFC_single_phase``, ``run_bp.py``: ``BP``, ``run_dfa.py``: ``DFA``)."""
    loss = "cross_entropy" if c["dataset"] in ("mnist", "fashion_mnist", "cifar10") else "mse"
    # raw lr with normalize_lr: their parser has already divided it by the target stepsize
    lr = _one(c["lr"], "lr") * (float(c["target_stepsize"]) if c["normalize_lr"] else 1.0)
    settings: dict[str, Any] = {"numerics": NUMERICS, "loss": loss}
    forward_args = (c["optimizer"], lr, (c["adam_beta1"], c["adam_beta2"]), _one(c["adam_epsilon"], "adam_epsilon"),
                    c["momentum"], c["weight_decay"])
    clip = float(c["clip_grad_norm"])
    clip_norm = clip if clip > 0 else None
    if network_type in ("BP", "DFA"):
        raise NotImplementedError("strong_dfc's BP and DFA runs (the examples follow the DFC paper's)")
    _refuse(c, {"inst_system_dynamics": False, "low_pass_filter_u": False, "use_jacobian_as_fb": False,
                "use_bp_updates": False, "freeze_fw_weights": False, "pretrain_without_controller": False,
                "sigma_init": 0.0, "no_val_set": False})
    strong = bool(c["strong_feedback"])
    single = network_type == "DFC_single_phase"
    if single and not strong:
        raise NotImplementedError("single-phase learning with a nudged (weak) target")
    if single and c["extra_fb_epochs"]:
        raise NotImplementedError("extra feedback epochs in single-phase runs (they use the wake dynamics)")
    if c["ssa"]:
        kind = "dfc_ssa"
    elif single or not c["ss"]:
        kind = "dfc"
    else:
        kind = "dfc_ss"
    fixed = bool(c["freeze_fb_weights"])
    if fixed != (c["initialization_fb"] == "weight_product"):
        raise NotImplementedError("frozen feedback with a random Q (or trained feedback at the weight product)")
    if strong:
        settings["variant"] = "strong_dfc" if single else "strong_dfc_ss"
        if kind != ("dfc" if single else "dfc_ss") or fixed:
            raise NotImplementedError(f"strong feedback with {kind}{' (fixed)' if fixed else ''}")
    else:
        settings["variant"] = kind + ("_fixed" if fixed else "")
    settings["target_stepsize"] = float(c["target_stepsize"])
    dt = float(c["dt_di"])
    # single-phase runs always low-pass filter the noise and make the apical compartment instantaneous
    lowpass = single or bool(c["low_pass_filter_noise"])
    noisy = single or bool(c["noisy_dynamics"])
    settings["dynamics"] = {
        "dt": dt, "steps": int(c["tmax_di"]), "k_p": float(c["k_p"]), "alpha": float(c["alpha_di"]),
        "tau_v": float(c["time_constant_ratio"]),
        "tau_apical": None if single else _tau_apical(c["apical_time_constant"], dt),
        "proactive": bool(c["proactive_controller"]), "inst_transmission": bool(c["inst_transmission"]),
        "sigma": float(c["sigma"]) if noisy else 0.0,
        "sigma_output": (None if float(c["sigma_output"]) == float(c["sigma"]) else float(c["sigma_output"]))
        if noisy else None,
        "tau_noise": float(c["tau_noise"]) if noisy and lowpass else None,
    }
    settings["updates"] = {
        "normalize_lr": bool(c["normalize_lr"]),
        "learning_rule": c["learning_rule"],
        "clip_norm": clip_norm,
        "clip_grouping": "layer",  # train_utils.py: [W_i, b_i] clipped jointly
        "exclude_non_converged": bool(c["include_only_converged_samples"]),
        "convergence_epsilon": float(c["epsilon_di"]),
    }
    if strong:
        settings["updates"]["target_class_value"] = float(c["target_class_value"])
    else:  # dfc_network.py compute_output_target: the gradient of batch_size x the mean loss
        settings["updates"]["target_loss"] = "sum"
    settings["forward_optimizer"] = _adam_or_sgd(*forward_args)
    if fixed:
        return settings
    dt_fb = float(c["dt_di_fb"])
    sigma_fb = float(c["sigma_fb"])
    sigma_out_fb = float(c["sigma_output_fb"])
    settings["feedback"] = {
        "pretrain_epochs": int(c["init_fb_epochs"]),
        "pretrain_until": None,  # a fixed number of pre-training epochs
        "sleep_before": 0 if single else 1,
        "sleep_after": int(c["extra_fb_epochs"]),
        "weight_decay": float(c["weight_decay_fb"]),
        "freeze_output": bool(c["freeze_fb_weights_output"]),
        "clip_norm": clip_norm,
        "clip_grouping": "layer",  # dfc_network_utils.py: each Q_i clipped separately
        "layer_scaling": bool(c["scaling_fb_updates"]),
        "simulation": {
            "dt": dt_fb, "steps": int(c["tmax_di_fb"]), "k_p": float(c["k_p_fb"]), "alpha": float(c["alpha_di_fb"]),
            "tau_v": float(c["time_constant_ratio_fb"]),
            "tau_apical": None if single else _tau_apical(c["apical_time_constant_fb"], dt_fb),
            "proactive": bool(c["proactive_controller"]),  # the run's controller (dfc_network.py L953)
            "inst_transmission": bool(c["inst_transmission_fb"]),
            "sigma": sigma_fb, "sigma_output": None if sigma_out_fb == sigma_fb else sigma_out_fb,
            "tau_noise": float(c["tau_noise"]) if lowpass else None,
        },
    }
    if single:
        settings["feedback"]["highpass_tau"] = float(c["tau_f"])
    fb_betas = (c["adam_beta1_fb"], c["adam_beta2_fb"])
    eps_fb = _one(c["adam_epsilon_fb"], "adam_epsilon_fb")
    momentum_fb = c.get("momentum_fb") or 0.0
    settings["feedback_optimizer"] = _adam_or_sgd(c["optimizer_fb"], _one(c["lr_fb"], "lr_fb"), fb_betas, eps_fb,
                                                  momentum_fb)
    settings["pretrain_optimizer"] = _adam_or_sgd(c["optimizer_fb"], _one(c["lr_fb_init"], "lr_fb_init"), fb_betas,
                                                  eps_fb, momentum_fb)
    return settings
