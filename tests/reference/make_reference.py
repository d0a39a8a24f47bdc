"""Reference data from the authors' own code, for ``tests/reference/test_reference.py``. Not run by CI.

The authors' repositories are run here side by side with nothing of ours: their networks, update
rules, optimizers and training loops produce the numbers, and this script only feeds them data,
fixes their random draws and records what they computed. It never edits their files; the one
shim it installs is for a removed torch API (``torch.solve``).

    # once: the authors' code at the pinned commits, and the packages it needs (not ours)
    git clone <deep_feedback_control> /tmp/ext/deep_feedback_control   # at 6208695
    git clone <strong_dfc> /tmp/ext/strong_dfc                          # at bb0f0a1
    pip install --target /tmp/ext/pydeps tensorboardX pandas hypnettorch seaborn
    # then
    PYTHONPATH=/tmp/ext/pydeps .venv/bin/python tests/reference/make_reference.py \\
        --dfc-repo /tmp/ext/deep_feedback_control --strong-repo /tmp/ext/strong_dfc \\
        --data-dir ../shared/data

What it writes (``tests/reference/``, float64 throughout):

* ``mnist_excerpt.pt``: the first 256 training images of the offline MNIST subset (uint8) and
  their labels. Every case standardises them as the authors' MNIST loaders do,
  ``(x / 255 - 0.1307) / 0.3081``, and pools them 2x2 to 14 x 14 (:func:`inputs`).
* ``<case>.pt``, one per case (:data:`CASES`): the command the authors' parser read, the config
  it made of it (after their post-processing), the network before, the input indices, the noise
  seed, and what their code computed: the raw ``.grad`` of every W_i, b_i (forward cases) or Q_i
  (feedback cases), written before any clipping; for whole runs (``run_*``) the data order of
  every epoch, the noise seed of every epoch and the parameters after the run.

**Noise, identically on both sides.** The authors draw each layer's noise with
``torch.randn_like`` inside their simulation loop. While one of their simulations runs, that
function is replaced by one that, once per Euler step, draws a ``(B, n_1 + ... + n_L)`` tensor
from a seeded ``torch.Generator`` and hands out its column blocks layer by layer: exactly the
draws our simulation makes from a generator with the same seed (one ``(B, S)`` tensor per step).
So only seeds are stored. In whole runs the generator is reseeded at the start of every epoch
(every pass over the training data), as our Lightning module reseeds it per epoch.

**Per-update cases** use 16 images and a 196-32-32-10 tanh network (autoencoder: 196-32-8-32-196)
with the published hyperparameters of the named config or command, with clipping switched off
(the clipped update is checked by the whole runs). Feedback weights of trained-feedback cases are
set to the weight product W_{i+1}^T ... W_L^T plus noise, so that the dynamics converge (a random
Q would make most samples non-converged and the update mostly zero).

**Whole runs** (pre-training, then 2 forward epochs with their sleep epochs, 256 images in
batches of 64, a 196-32-32-10 network) run the authors' own training functions: for
deep_feedback_control ``utils.train.train`` (what ``main.py`` calls after loading data), for
strong_dfc ``main.run`` itself with only its data loader replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
PINNED = {
    "deep_feedback_control": "62086954f69dbf2e7286df9450cf6cd1825001b8",
    "strong_dfc": "bb0f0a15498250835d0e216f98305515cef3b088",
}
N_IMAGES = 256
N_INPUTS = 196  # 14 x 14 (see inputs())
AUTOENCODER_POOL = 4  # the autoencoder's output is its input: 7 x 7 keeps its Q_i small
UPDATE_BATCH = 16
HIDDEN = [32, 32]
RUN_BATCH = 64
RUN_EPOCHS = 2

# ---------------------------------------------------------------------------------------------
# the cases

# deep_feedback_control: (case name, config module, overrides of its config dict, kind)
DFC_PAPER_CASES = [
    ("dfc", "configs.configs_mnist.mnist_dfc", {}, "forward"),
    ("dfc_ss", "configs.configs_mnist.mnist_dfc_ss", {}, "forward"),
    # the published SSA config also searches a GN damping and logs angles: not part of the update
    ("dfc_ssa", "configs.configs_mnist.mnist_dfc_ssa", {"gn_damping_hpsearch": False, "save_GNT_angle": False,
                                                      "save_logs": False, "save_df": False}, "forward"),
    ("dfc_fixed", "configs.configs_mnist.mnist_fixed_dfc", {}, "forward"),
    ("dfc_ss_fixed", "configs.configs_mnist.mnist_fixed_dfc_ss", {}, "forward"),
    ("dfc_ssa_fixed", "configs.configs_mnist.mnist_fixed_dfc_ssa", {}, "forward"),
    ("dfa", "configs.configs_mnist.mnist_dfa", {}, "forward"),
    ("bp", "configs.configs_mnist.mnist_bp", {}, "forward"),
    ("dfc_autoencoder", "configs.configs_mnist_auto.mnist_auto_dfc", {}, "forward"),
    ("dfc_sleep", "configs.configs_mnist.mnist_dfc", {}, "feedback"),
    ("dfc_sleep_autoencoder", "configs.configs_mnist_auto.mnist_auto_dfc", {}, "feedback"),
    # Whole runs. The tiny network's updates (norms 1e-4 to 1e-2) never reach the published clipping
    # norm 1, as the raw Q updates (norms 1e2-1e3) do at MNIST scale. 7e-4 lies among the norms
    # of the layers' updates, so that the clipping acts on some tensors in some steps: Adam is
    # blind to a clipping factor that stays constant, so only then does the run test it.
    ("run_dfc", "configs.configs_mnist.mnist_dfc", {"epochs_fb": 2, "clip_grad_norm": 7e-4}, "run"),
    # Fashion-MNIST's DFC hyperparameters (a frozen Q_L, non-proactive, T = 300) on MNIST images
    ("run_dfc_frozen_output", "configs.configs_fmnist.fmnist_dfc",
     {"epochs_fb": 1, "dataset": "mnist", "clip_grad_norm": 7e-4}, "run"),
    ("run_dfc_fixed", "configs.configs_mnist.mnist_fixed_dfc", {"clip_grad_norm": 7e-4}, "run"),
]

# strong_dfc: the published MNIST commands of dfc/EXPERIMENTS.rst, exactly as printed there
STRONG_COMMANDS = {
    "strong_dfc": (
        "DFC_single_phase",
        "--double_precision --epochs=40 --clip_grad_norm=1.0 --lr=0.0003095880739373081 --optimizer=Adam "
        "--adam_beta1=0.9 --adam_epsilon=1.6288767089312233e-05 --dataset=mnist --target_class_value=0.99 "
        "--size_hidden=256,256,256 --hidden_activation=tanh --initialization=xavier_normal "
        "--lr_fb=2.0091405897656825e-08 --optimizer_fb=Adam --weight_decay_fb=0.5 --adam_beta2_fb=0.999 "
        "--adam_epsilon_fb=1.1023320392297719e-11 --tau_noise=0.07 --strong_feedback --error_as_loss_grad "
        "--initialization_fb=xavier_normal --learning_rule=nonlinear_difference --init_fb_epochs=1 "
        "--lr_fb_init=4.5160347135162454e-07 --scaling_fb_updates --proactive_controller --tau_f=0.5 "
        "--dt_di=0.001 --tmax_di=500 --inst_transmission --time_constant_ratio=0.009268288409004458 "
        "--sigma=0.004278964325349612 --sigma_output=0.029713880264874388 --alpha_di=7.608673370995652e-06 "
        "--k_p=2.0 --apical_time_constant=-1 --dt_di_fb=0.0012167769308505587 --tmax_di_fb=500 "
        "--inst_transmission_fb --time_constant_ratio_fb=0.014441072404716454 --sigma_fb=2.760795719756352e-05 "
        "--sigma_output_fb=1.5149030252289032e-05 --alpha_di_fb=0.016257243484558315 "
        "--k_p_fb=0.0028004742554235116 --save_df --save_condition_fb --noisy_dynamics",
    ),
    "strong_dfc_ss": (
        "DFC",
        "--double_precision --epochs=40 --clip_grad_norm=1.0 --lr=0.0006560184719951886 --optimizer=Adam "
        "--adam_beta1=0.9 --adam_epsilon=0.00023225688276019436 --dataset=mnist --target_class_value=0.9 "
        "--size_hidden=256,256,256 --hidden_activation=tanh --initialization=xavier_normal "
        "--lr_fb=9.776610079269425e-06 --optimizer_fb=Adam --weight_decay_fb=1e-05 --adam_beta1_fb=0.999 "
        "--adam_beta2_fb=0.9 --adam_epsilon_fb=0.0019707791920650247 --ss --tau_noise=0.05 "
        "--target_stepsize=0.5 --error_as_loss_grad --initialization_fb=xavier_normal "
        "--learning_rule=nonlinear_difference --init_fb_epochs=1 --lr_fb_init=0.0002730319014715041 "
        "--proactive_controller --tau_f=0.5 --dt_di=0.001 --tmax_di=500 --inst_transmission "
        "--time_constant_ratio=0.03553062335953924 --sigma=0.15 --alpha_di=0.008082122141749502 --k_p=2.0 "
        "--apical_time_constant=-1 --dt_di_fb=0.0031943783402810927 --tmax_di_fb=500 --inst_transmission_fb "
        "--time_constant_ratio_fb=0.0072383695016716215 --alpha_di_fb=0.9944618528446518 "
        "--k_p_fb=0.0691564739128701 --apical_time_constant_fb=0.12961120842685991 --strong_feedback",
    ),
}
# the printed DFC command of strong_dfc's MNIST table ("DFC (no noise)", run_dfc.py)
STRONG_COMMANDS["dfc"] = (
    "DFC",
    "--double_precision --epochs=40 --batch_size=32 --clip_grad_norm=1.0 --lr=0.0010924329072635147 "
    "--optimizer=Adam --adam_beta1=0.9 --adam_epsilon=5.83238643406511e-07 --dataset=mnist "
    "--hidden_activation=tanh --initialization=xavier_normal --lr_fb=4.348352883654314e-05 --optimizer_fb=Adam "
    "--weight_decay_fb=0.1 --adam_epsilon_fb=3.355535527361205e-05 --target_stepsize=0.013812748252649061 "
    "--initialization_fb=xavier_normal --learning_rule=nonlinear_difference --init_fb_epochs=20 "
    "--lr_fb_init=0.0001524121535306385 --proactive_controller --dt_di=0.02 --tmax_di=500 --inst_transmission "
    "--time_constant_ratio=0.2 --sigma=0.035483751742735006 --alpha_di=0.0017723664900917734 --k_p=2.0 "
    "--apical_time_constant=-1 --dt_di_fb=0.0011421804343878519 --tmax_di_fb=44 --inst_transmission_fb "
    "--time_constant_ratio_fb=0.005870467170683501 --alpha_di_fb=0.39857902933813705 "
    "--k_p_fb=0.0713515876863314 --apical_time_constant_fb=0.1404664564483908 --size_hidden=256,256,256",
)
# strong_dfc: (case name, command, extra arguments, kind)
STRONG_CASES = [
    # its DFC command with --noisy_dynamics (examples/mnist_dfc_noisy_dynamics.yaml): the wake
    # update averaged over a noisy trajectory, and its sleep phase at the same sigma
    ("dfc_noisy_wake", "dfc", ["--noisy_dynamics"], "forward"),
    ("dfc_noisy_sleep", "dfc", ["--noisy_dynamics"], "feedback"),
    # and its whole training loop (1 pre-training epoch instead of 20, 2 wake epochs)
    ("run_dfc_noisy_dynamics", "dfc", ["--noisy_dynamics", "--epochs=2", "--init_fb_epochs=1"], "run"),
    ("strong_dfc_wake", "strong_dfc", [], "forward"),  # W, b and Q from one noisy simulation
    ("strong_dfc_pretrain", "strong_dfc", [], "pretrain"),
    ("strong_dfc_ss_wake", "strong_dfc_ss", [], "forward"),
    ("strong_dfc_ss_sleep", "strong_dfc_ss", [], "feedback"),
    ("strong_dfc_ss_pretrain", "strong_dfc_ss", [], "pretrain"),
    ("run_strong_dfc", "strong_dfc", ["--epochs=2"], "run"),
    # two sleep epochs after each wake epoch (the Fashion-MNIST command's schedule)
    ("run_strong_dfc_ss", "strong_dfc_ss", ["--epochs=2", "--extra_fb_epochs=1"], "run"),
]


# ---------------------------------------------------------------------------------------------
# helpers shared by both code bases (they run in the child process, after torch is imported)


def inputs(pixels, pool=2):
    """The network inputs of the reference cases, float64 (N, (28 / pool)^2), from uint8 images
    (N, 28, 28): the authors' MNIST standardisation, then ``pool`` x ``pool`` average pooling
    (which keeps the reference files small; the authors' networks take any input width)."""
    import torch

    x = (pixels.double() / 255.0 - 0.1307) / 0.3081
    return torch.nn.functional.avg_pool2d(x.unsqueeze(1), pool).flatten(1)


class StepNoise:
    """Stands in for ``torch.randn_like`` inside one of the authors' simulations.

    Per Euler step it draws one ``(B, S)`` tensor from ``generator`` and hands out its column
    blocks to the layers' calls, in the order the layers ask (``layer_sizes`` gives the blocks;
    layer 1 first for ``inst_transmission``, otherwise the authors loop from layer L down).
    """

    def __init__(self, torch, generator, layer_sizes, forward_order=True):
        self.torch, self.generator, self.sizes, self.forward_order = torch, generator, layer_sizes, forward_order
        self.queue = []

    def __call__(self, like, *args, **kwargs):
        torch = self.torch
        if not self.queue:
            full = torch.randn((like.shape[0], sum(self.sizes)), dtype=like.dtype, generator=self.generator)
            blocks = list(torch.split(full, self.sizes, dim=1))
            self.queue = blocks if self.forward_order else blocks[::-1]
        block = self.queue.pop(0)
        if block.shape != like.shape:
            raise RuntimeError(f"noise request {tuple(like.shape)} out of step with the layer order {self.sizes}")
        return block.clone()


@contextlib.contextmanager
def injected_noise(torch, generator, layer_sizes, forward_order=True):
    original = torch.randn_like
    torch.randn_like = StepNoise(torch, generator, layer_sizes, forward_order)
    try:
        yield
    finally:
        leftover = torch.randn_like.queue
        torch.randn_like = original
        if leftover:
            raise RuntimeError("a simulation ended in the middle of a step's noise draws")


def install_shims(torch):
    """What the authors' code (written for torch 1.x) needs from today's torch: ``torch.solve``
    (removed), and ``zero_grad`` leaving zero tensors (torch 2 sets ``.grad`` to ``None``, and
    their steady-state rules add into ``.grad``). float64 throughout, as their runs set it."""
    torch.solve = lambda B, A: (torch.linalg.solve(A, B), None)
    zero_grad = torch.optim.Optimizer.zero_grad
    torch.optim.Optimizer.zero_grad = lambda self, set_to_none=False: zero_grad(self, set_to_none=set_to_none)
    torch.set_default_dtype(torch.float64)


def plain(value: Any) -> Any:
    """JSON-able copy of a parsed config value."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def config_dict(namespace) -> dict[str, Any]:
    return {k: plain(v) for k, v in sorted(vars(namespace).items())}


class EpochLoader:
    """An iterable of (inputs, targets) batches whose k-th pass follows the k-th stored order and
    reseeds the noise generator with the k-th seed (one pass = one epoch of the authors' loops)."""

    def __init__(self, torch, x, y, orders, batch, noise, seeds):
        self.torch, self.x, self.y, self.orders, self.batch = torch, x, y, orders, batch
        self.noise, self.seeds, self.passes = noise, seeds, 0

    def __len__(self):
        return (self.x.shape[0] + self.batch - 1) // self.batch

    def __iter__(self):
        if self.passes >= len(self.orders):
            raise RuntimeError("the authors' loop made more passes over the data than recorded")
        order, seed = self.orders[self.passes], self.seeds[self.passes]
        self.passes += 1
        self.noise.manual_seed(seed)
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            yield self.x[idx], self.y[idx]


def near_weight_product(torch, weights, seed=7):
    """Feedback weights near the weight product W_{i+1}^T ... W_L^T (Q_L near I), so that the
    dynamics of a per-update case converge: the product plus 30 % of its std as noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(weights)):
        product = torch.eye(weights[-1].shape[0])
        for later in reversed(weights[i + 1:]):
            product = later.t() @ product
        out.append(product + 0.3 * product.std() * torch.randn(product.shape, generator=g))
    return out


def epoch_orders(torch, n_passes, n_images, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_images, generator=g) for _ in range(n_passes)]


# ---------------------------------------------------------------------------------------------
# deep_feedback_control


def run_dfc_paper(repo: Path, out: Path, only: set[str] | None) -> None:
    import numpy as np
    import torch

    install_shims(torch)
    sys.path.insert(0, str(repo))
    run_config = importlib.import_module("run_config")
    args_mod = importlib.import_module("utils.args")
    builders = importlib.import_module("utils.builders")
    train_mod = importlib.import_module("utils.train")
    utils_mod = importlib.import_module("utils.utils")
    excerpt = torch.load(out / "mnist_excerpt.pt")

    for name, module, overrides, kind in DFC_PAPER_CASES:
        if only and name not in only:
            continue
        config = dict(importlib.import_module(module).config)
        autoencoder = config["dataset"] == "mnist_autoencoder"
        pool = AUTOENCODER_POOL if autoencoder else 2
        n_in = (28 // pool) ** 2
        config.update(size_input=n_in, size_output=n_in if autoencoder else 10,
                      num_hidden=3 if autoencoder else len(HIDDEN),
                      size_hidden="32,8,32" if autoencoder else ",".join(map(str, HIDDEN)),
                      out_dir=tempfile.mkdtemp(), **overrides)
        if autoencoder:
            config["hidden_activation"] = "tanh,linear,tanh"
        if kind != "run":
            config["clip_grad_norm"] = -1.0  # the raw update (the runs check the clipped one)
        run_config._override_cmd_arg(config)  # their own config -> command line conversion
        argv = sys.argv[1:]
        args = args_mod.parse_cmd_arguments(argv=argv)
        torch.manual_seed(args.random_seed)
        np.random.seed(args.random_seed)
        net = builders.build_network(args)
        x_all, y_all = inputs(excerpt["images"], pool), excerpt["labels"]
        record: dict[str, Any] = {"code": "deep_feedback_control", "commit": PINNED["deep_feedback_control"],
                                  "pool": pool, "config_module": module, "command": argv, "config": config_dict(args),
                                  "kind": kind, "case": name}
        layers = net.layers
        if args.network_type == "DFC":
            sizes = [layer.weights.shape[0] for layer in layers]
            if not args.freeze_fb_weights:
                with torch.no_grad():
                    for layer, q in zip(layers, near_weight_product(torch, [l.weights for l in layers])):
                        layer.feedbackweights.copy_(q)

        def snapshot():
            if args.network_type == "DFC":
                return {"W": [l.weights.detach().clone() for l in layers],
                        "b": [l.bias.detach().clone() for l in layers],
                        "Q": [l.feedbackweights.detach().clone() for l in layers]}
            if args.network_type == "DFA":
                return {"W": [l.weights.detach().clone() for l in layers],
                        "b": [l.bias.detach().clone() for l in layers],
                        # B_i (a linear map with a bias, which cancels in the target) maps the
                        # output error to layer i: our Q_i (Q_L = I)
                        "Q": [l._fb_mlp.layers[0].weight.detach().clone() for l in layers[:-1]]
                        + [torch.eye(layers[-1].weights.shape[0])]}
            return {"W": [l.weight.detach().clone() for l in layers],
                    "b": [l.bias.detach().clone() for l in layers]}

        record["before"] = snapshot()
        targets_of = (lambda xb, yb: xb) if autoencoder else (lambda xb, yb: yb)
        loss_fn = torch.nn.MSELoss() if autoencoder else torch.nn.CrossEntropyLoss()

        if kind in ("forward", "feedback"):
            idx = torch.arange(UPDATE_BATCH)
            x, y = x_all[idx], y_all[idx]
            record["indices"] = idx
            record["noise_seed"] = 11
            noise = torch.Generator().manual_seed(11)
            if args.network_type == "BP":
                net.zero_grad()
                loss_fn(net(x), targets_of(x, y)).backward()
                record["update"] = {"W": [l.weight.grad.clone() for l in layers],
                                    "b": [l.bias.grad.clone() for l in layers]}
            elif kind == "forward":
                predictions = net.forward(x)
                if not predictions.requires_grad:
                    predictions.requires_grad = True
                for p in net.get_forward_parameter_list():
                    p.grad = torch.zeros_like(p)  # DFC-SS accumulates into .grad
                net.backward(loss_fn(predictions, targets_of(x, y)), args.target_stepsize, save_target=False)
                record["update"] = {"W": [l.weights.grad.clone() for l in layers],
                                    "b": [l.bias.grad.clone() for l in layers]}
                if args.network_type == "DFC" and not args.ndi:
                    record["converged"] = int(net.converged_samples_per_epoch)
            else:
                net.forward(x)
                with injected_noise(torch, noise, sizes, args.inst_transmission_fb):
                    net.compute_feedback_gradients()
                record["update"] = {"Q": [l.feedbackweights.grad.clone() for l in layers]}
        else:
            run_dfc_paper_training(torch, args, net, x_all, y_all, targets_of, train_mod, utils_mod, record)
            record["after"] = snapshot()
        torch.save(record, out / f"{name}.pt")
        print(f"wrote {name}.pt", flush=True)


def run_dfc_paper_training(torch, args, net, x_all, y_all, targets_of, train_mod, utils_mod, record):
    """``utils.train.train`` (deep_feedback_control's training loop) on 256 images."""
    sizes = [layer.weights.shape[0] for layer in net.layers]
    epochs_fb = args.epochs_fb if not args.freeze_fb_weights else 0
    per_epoch = 1 if args.freeze_fb_weights else 2 + args.extra_fb_epochs
    n_passes = epochs_fb + RUN_EPOCHS * per_epoch
    orders = epoch_orders(torch, n_passes, N_IMAGES)
    seeds = [100 + k for k in range(n_passes)]
    noise = torch.Generator()
    y_train = x_all if targets_of(x_all, y_all) is x_all else y_all
    loader = EpochLoader(torch, x_all, y_train, orders, RUN_BATCH, noise, seeds)
    holdout = [(x_all[:32], targets_of(x_all[:32], y_all[:32]))]
    args.epochs = RUN_EPOCHS
    args.save_logs = False
    original = net.controller

    def controller(*a, **kw):  # every simulation of the run draws its noise from `noise`
        inst = kw.get("inst_transmission", True)
        with injected_noise(torch, noise, sizes, inst):
            return original(*a, **kw)

    net.controller = controller
    summary = utils_mod.setup_summary_dict(args)
    net.save_convergence = args.save_convergence = True
    train_mod.train(args=args, device=torch.device("cpu"), train_loader=loader, net=net, writer=None,
                    test_loader=holdout, summary=summary, val_loader=holdout)
    if loader.passes != n_passes:
        raise RuntimeError(f"expected {n_passes} passes over the data, the loop made {loader.passes}")
    record.update(orders=orders, epoch_seeds=seeds, batch_size=RUN_BATCH, epochs=RUN_EPOCHS,
                  indices=torch.arange(N_IMAGES))


# ---------------------------------------------------------------------------------------------
# strong_dfc


def run_strong(repo: Path, out: Path, only: set[str] | None) -> None:
    import numpy as np
    import torch

    install_shims(torch)
    sys.path.insert(0, str(repo / "dfc"))
    args_mod = importlib.import_module("utils.args")
    net_utils = importlib.import_module("networks.net_utils")
    main_mod = importlib.import_module("main")
    excerpt = torch.load(out / "mnist_excerpt.pt")
    x_all, y_all = inputs(excerpt["images"]), excerpt["labels"]
    logger = logging.getLogger("strong_dfc_reference")

    for name, command, extra, kind in STRONG_CASES:
        if only and name not in only:
            continue
        network_type, text = STRONG_COMMANDS[command]
        argv = text.split() + extra + ["--size_hidden=" + ",".join(map(str, HIDDEN)),
                                       f"--out_dir={tempfile.mkdtemp()}/out", "--no_plots"]
        if kind != "run":
            argv.append("--clip_grad_norm=-1")
        config = args_mod.parse_cmd_arguments(network_type=network_type, argv=argv)
        record: dict[str, Any] = {"code": "strong_dfc", "commit": PINNED["strong_dfc"], "pool": 2, "command": argv,
                                  "published_command": text.split(), "network_type": network_type,
                                  "config": config_dict(config), "kind": kind, "case": name}
        soft = soft_labels(torch, y_all, config.target_class_value)
        if kind == "run":
            run_strong_training(torch, np, main_mod, net_utils, network_type, argv, x_all, y_all, soft, record)
            torch.save(record, out / f"{name}.pt")
            print(f"wrote {name}.pt", flush=True)
            continue
        torch.manual_seed(42)
        data = SimpleNamespace(in_size=N_INPUTS, out_size=10)
        net = net_utils.generate_network(config, data, torch.device("cpu"), network_type, logger=logger)
        layers = net.layers
        sizes = [layer.weights.shape[0] for layer in layers]
        with torch.no_grad():
            for layer, q in zip(layers, near_weight_product(torch, [l.weights for l in layers])):
                layer.weights_backward.copy_(q)
        record["before"] = strong_snapshot(net)
        idx = torch.arange(UPDATE_BATCH)
        x, targets = x_all[idx], soft[idx]
        record.update(indices=idx, noise_seed=11)
        noise = torch.Generator().manual_seed(11)
        loss_fn = importlib.import_module("utils.math_utils").cross_entropy_fn()
        # what train() sets before the forward epochs, with --error_as_loss_grad only (pre-training,
        # and every phase of a run without that flag, use the default 'mse': e = r_L* - r_L)
        net.loss_function_name = "cross_entropy" if kind != "pretrain" and config.error_as_loss_grad else "mse"
        for p in [*net.forward_params, *net.feedback_params]:
            for t in p:
                t.grad = torch.zeros_like(t)
        predictions = net.forward(x)
        loss = loss_fn(predictions, targets)
        if kind == "forward":
            with injected_noise(torch, noise, sizes, config.inst_transmission):
                net.backward(loss, targets=targets)
            record["update"] = {"W": [l.weights.grad.clone() for l in layers],
                                "b": [l.bias.grad.clone() for l in layers]}
            if network_type == "DFC_single_phase":
                record["update"]["Q"] = [l.weights_backward.grad.clone() for l in layers]
        else:
            with injected_noise(torch, noise, sizes, config.inst_transmission_fb):
                net.compute_feedback_gradients(loss, targets, init=kind == "pretrain")
            record["update"] = {"Q": [l.weights_backward.grad.clone() for l in layers]}
        torch.save(record, out / f"{name}.pt")
        print(f"wrote {name}.pt", flush=True)


def soft_labels(torch, labels, value):
    """strong_dfc's MNIST targets (datahandlers/mnist_data.py): soft one-hot vectors, or the
    integer labels for a class value of 1."""
    if value == 1:
        return labels
    soft = torch.full((labels.shape[0], 10), (1 - value) / 9)
    soft[torch.arange(labels.shape[0]), labels] = value
    return soft


def strong_snapshot(net):
    return {"W": [l.weights.detach().clone() for l in net.layers],
            "b": [l.bias.detach().clone() for l in net.layers],
            "Q": [l.weights_backward.detach().clone() for l in net.layers]}


def run_strong_training(torch, np, main_mod, net_utils, network_type, argv, x_all, y_all, soft, record):
    """strong_dfc's ``main.run`` with its data loader replaced by 256 images in a fixed order."""
    config = importlib.import_module("utils.args").parse_cmd_arguments(network_type=network_type, argv=argv)
    passes = config.init_fb_epochs + config.epochs * (1 + (network_type == "DFC") + config.extra_fb_epochs)
    orders = epoch_orders(torch, passes, N_IMAGES)
    seeds = [100 + k for k in range(passes)]
    noise = torch.Generator()
    loader = EpochLoader(torch, x_all, soft, orders, RUN_BATCH, noise, seeds)
    holdout = [(x_all[:32], soft[:32])]
    dloader = SimpleNamespace(train=loader, test=holdout, val=holdout, in_size=N_INPUTS, out_size=10)
    captured = {}
    generate_network = net_utils.generate_network

    def build(config, dataset, device, network_type, logger=None):
        net = generate_network(config, dataset, device, network_type, logger=logger)
        sizes = [layer.weights.shape[0] for layer in net.layers]
        original = net.controller

        def controller(*a, **kw):
            with injected_noise(torch, noise, sizes, kw.get("inst_transmission", False)):
                return original(*a, **kw)

        net.controller = controller
        captured["net"], captured["before"] = net, strong_snapshot(net)
        return net

    main_mod.generate_task = lambda config, logger, device: dloader
    main_mod.generate_network = build
    sys.argv = ["run"] + argv
    main_mod.run(network_type=network_type)
    if loader.passes != passes:
        raise RuntimeError(f"expected {passes} passes over the data, the loop made {loader.passes}")
    record.update(before=captured["before"], after=strong_snapshot(captured["net"]), orders=orders,
                  epoch_seeds=seeds, batch_size=RUN_BATCH, epochs=config.epochs, indices=torch.arange(N_IMAGES))


# ---------------------------------------------------------------------------------------------


def check_commit(repo: Path, name: str) -> None:
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if head != PINNED[name]:
        raise SystemExit(f"{repo} is at {head}, not the pinned {name} commit {PINNED[name]}")
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                           check=True).stdout.strip()
    if dirty:
        raise SystemExit(f"{repo} has local changes; use a clean checkout of the pinned commit")


def write_excerpt(data_dir: Path, out: Path) -> None:
    import torch
    from torchvision.datasets import MNIST

    mnist = MNIST(str(data_dir), train=True, download=False)
    torch.save({"images": mnist.data[:N_IMAGES].clone(), "labels": mnist.targets[:N_IMAGES].clone(),
                "source": "the first 256 training images of MNIST (offline subset, torchvision layout)"},
               out / "mnist_excerpt.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dfc-repo", type=Path, help="checkout of meulemansalex/deep_feedback_control")
    parser.add_argument("--strong-repo", type=Path, help="checkout of mariacer/strong_dfc")
    parser.add_argument("--data-dir", type=Path, help="folder with MNIST/raw/ (torchvision layout)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", nargs="*", help="case names to (re)make")
    parser.add_argument("--child", choices=["dfc", "strong"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = set(args.only) if args.only else None
    if args.child == "dfc":
        os.chdir(tempfile.mkdtemp())  # their code writes logs into the working directory
        return run_dfc_paper(args.dfc_repo.resolve(), args.out.resolve(), only)
    if args.child == "strong":
        os.chdir(tempfile.mkdtemp())
        return run_strong(args.strong_repo.resolve(), args.out.resolve(), only)
    if args.data_dir is not None:
        write_excerpt(args.data_dir, args.out)
    # each code base in its own process: both have top-level packages named utils, networks, main
    for child, repo, name in (("dfc", args.dfc_repo, "deep_feedback_control"), ("strong", args.strong_repo, "strong_dfc")):
        if repo is None:
            continue
        check_commit(repo, name)
        command = [sys.executable, __file__, "--child", child, f"--{'dfc' if child == 'dfc' else 'strong'}-repo",
                   str(repo), "--out", str(args.out)] + (["--only", *args.only] if args.only else [])
        subprocess.run(command, check=True)
    manifest = {"pinned_commits": PINNED, "cases": sorted(p.stem for p in args.out.glob("*.pt") if p.stem != "mnist_excerpt")}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
