"""A user's own MLP under ``DFCMixin`` defaults against the same model trained by backprop, for the
same number of forward-weight updates, and the settings that explain the gap (issue 14, "defaults
that learn"; the results are in ``docs/user_guide.md``, section "Defaults").

The model is what a Lightning user writes first: ``nn.Sequential(Flatten, Linear(784, H), act,
Linear(H, 10))`` (``act`` tanh or ReLU, PyTorch's default initialisation), a ``training_step`` with
cross-entropy, ``configure_optimizers`` returning ``Adam(lr=1e-3)``, validation accuracy. The DFC
rows mix in :class:`lightning_dfc.DFCMixin` with only ``dfc_network_attribute`` set, plus the
row's own settings (``ROWS``). Both train for ``--epochs`` forward-weight epochs of the same
batches (the DFC rows add their feedback pre-training and sleep epochs).

Rows (``--rows``):

    bp                the user's model trained with backprop and its own Adam(1e-3)
    bp_dfc_optimizer  backprop with the papers' forward optimizer (Adam, lr 9.266e-5 / lambda,
                      betas (0.99, 0.99), eps 9.446e-8): the optimizer's share of the gap
    dfc_pretrain0     DFC, no pre-training, the papers' forward optimizer
    dfc_pretrain10    DFC, 10 pre-training epochs, the papers' forward optimizer (the library
                      defaults before issue 14)
    dfc_pretrain10_betas  DFC, 10 pre-training epochs, the default forward optimizer (torch's betas)
    dfc_until95, dfc_until99  DFC, pre-training until Condition 2 >= 0.95 / 0.99 or levelled off
                      (``feedback.pretrain_until``), the papers' forward optimizer
    dfc               DFCMixin defaults (pre-training until Condition 2 >= 0.95, torch's betas)
    bp_in_dfc_loop    the BP gradient applied by DFCMixin's training loop (``dfc_variant="bp"``,
                      its clipping, the papers' optimizer with lr / lambda): the loop's share
    dfc_ss_until95    DFC-SS, the steady state solved exactly, as ``dfc_until95``: the simulation's share

Per run, one JSON line is appended to ``--results`` as soon as it finishes (``--resume`` skips runs
already there): the validation accuracy after every wake epoch; at the start of the first wake
epoch and at the end, on 256 validation images, Condition 2, the angle between Q and J^T and the
angle between the method's update and the BP gradient; the pre-training epochs that ran; the wall
time (two runs at a time, ``nice``: a rough cost, not a timing). ``--output`` gets the Markdown
table (mean and min–max over seeds). Data: the offline subset, 5,000 training / 1,000 validation
images (``--val-size``).

    nice python benchmarks/first_hour.py --data-dir ../shared/data --activations tanh \
        --seeds 0 1 2 3 --epochs 3 --results first_hour_tanh.jsonl --resume
    python benchmarks/first_hour.py --table-only --results first_hour.jsonl --epochs 3 --output table.md
    python benchmarks/first_hour.py --measure-cost   # the pre-training measure against an epoch
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_dfc import DFCMixin, FeedbackConfig, UpdateConfig
from lightning_dfc.core.diagnostics import angle, condition_2, feedback_alignment, jacobian_at
from lightning_dfc.shell.data import MNISTDataModule

DFC_LAMBDA = 0.07794
PAPER_FORWARD = functools.partial(torch.optim.Adam, lr=9.266e-5, betas=(0.99, 0.99), eps=9.446e-8)
ROWS: dict[str, dict[str, Any]] = {
    "bp": {"kind": "bp", "optimizer": "user"},
    "bp_dfc_optimizer": {"kind": "bp", "optimizer": "paper"},
    "dfc_pretrain0": {"kind": "dfc", "optimizer": "paper", "feedback": {"pretrain_epochs": 0}},
    "dfc_pretrain10": {"kind": "dfc", "optimizer": "paper", "feedback": {"pretrain_epochs": 10, "pretrain_until": None}},
    "dfc_pretrain10_betas": {"kind": "dfc", "feedback": {"pretrain_epochs": 10, "pretrain_until": None}},
    "dfc_until95": {"kind": "dfc", "optimizer": "paper", "feedback": {"pretrain_epochs": 200, "pretrain_until": 0.95}},
    "dfc_until99": {"kind": "dfc", "optimizer": "paper", "feedback": {"pretrain_epochs": 200, "pretrain_until": 0.99}},
    "dfc": {"kind": "dfc"},
    "bp_in_dfc_loop": {"kind": "dfc", "optimizer": "paper", "variant": "bp", "updates": {"normalize_lr": True}},
    "dfc_ss_until95": {"kind": "dfc", "optimizer": "paper", "variant": "dfc_ss",
                       "feedback": {"pretrain_epochs": 200, "pretrain_until": 0.95}},
}
DESCRIPTIONS = {
    "bp": "BP, the user's Adam(1e-3)",
    "bp_dfc_optimizer": "BP, the papers' forward optimizer",
    "dfc_pretrain0": "DFC, no pre-training (papers' optimizer)",
    "dfc_pretrain10": "DFC, 10 pre-training epochs, the papers' optimizer (the old defaults)",
    "dfc_pretrain10_betas": "DFC, 10 pre-training epochs, torch's betas",
    "dfc_until95": "DFC, pre-training until aligned (0.95), the papers' optimizer",
    "dfc_until99": "DFC, pre-training until aligned (0.99), the papers' optimizer",
    "dfc": "DFC, DFCMixin defaults (until aligned, torch's betas)",
    "bp_in_dfc_loop": "BP through DFCMixin's loop (variant bp), the papers' optimizer",
    "dfc_ss_until95": "DFC-SS (exact steady state), until aligned (0.95), the papers' optimizer",
}


class LitMLP(pl.LightningModule):
    """The user's model: one hidden layer, cross-entropy, Adam(1e-3), validation accuracy."""

    def __init__(self, activation: str = "tanh", hidden: int = 256, optimizer: Any = None) -> None:
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), act(), nn.Linear(hidden, 10))
        self.optimizer = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return self.optimizer(self.parameters())


class DFCLitMLP(DFCMixin, LitMLP):
    pass


class Recorder(pl.Callback):
    """Validation accuracy after every wake epoch; on fixed images, when the first wake epoch
    starts and when the fit ends: Condition 2, angle(Q, J^T), the angle between the method's
    update and the BP gradient, and the non-converged samples of that update."""

    def __init__(self, probe: torch.Tensor, labels: torch.Tensor) -> None:
        self.probe, self.labels = probe, labels
        self.curve: list[float] = []
        self.alignment: dict[str, dict[str, float]] = {}
        self.pretrain_curve: list[float] = []  # the module's own Condition 2 after each pre-training epoch
        self._after_pretrain_epoch = False

    def _is_wake(self, pl_module) -> bool:
        return not hasattr(pl_module, "dfc_phase") or pl_module.dfc_phase.phase.value == "wake"

    def _note_pretrain_epoch(self, pl_module) -> None:
        """The module measures Condition 2 in its own on_train_epoch_end, after the callbacks'."""
        if self._after_pretrain_epoch:
            self.pretrain_curve.append(float(pl_module._dfc_pretrain_condition_2))
            self._after_pretrain_epoch = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._note_pretrain_epoch(pl_module)
        if hasattr(pl_module, "dfc_phase") and self._is_wake(pl_module) and not self.alignment:
            self.alignment["first_wake"] = self.measure(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._after_pretrain_epoch = hasattr(pl_module, "dfc_phase") and pl_module.dfc_phase.phase.name == "PRETRAIN"

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._is_wake(pl_module):
            self.curve.append(float(trainer.callback_metrics["val_acc"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        self._note_pretrain_epoch(pl_module)
        if hasattr(pl_module, "dfc_net"):
            self.alignment["end"] = self.measure(pl_module)

    def measure(self, pl_module) -> dict[str, float]:
        params = pl_module.dfc_net.params()
        x = pl_module.dfc_net.prepare_input(self.probe.to(pl_module.device, params.weights[0].dtype))
        jac = jacobian_at(params, x)
        qbar = torch.cat(list(params.feedback))
        y = self.labels.to(pl_module.device)
        update = pl_module.dfc_wake_update(x, y)
        forward = pl_module.dfc_net.forward_parameters()
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(pl_module.dfc_net(x), y)
            bp = torch.autograd.grad(loss, forward)
        return {"condition_2": float(condition_2(jac, qbar).mean()),
                "angle_q_jt": float(feedback_alignment(jac, qbar).transpose),
                "angle_update_bp": float(angle(update.tensors(), list(bp))),
                "non_converged": float(update.stats.get("non_converged", 0.0))}


def _dfc_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``DFCMixin`` keyword arguments of a DFC row."""
    extra: dict[str, Any] = {}
    if spec.get("optimizer") == "paper":
        extra["dfc_forward_optimizer"] = PAPER_FORWARD
    if "feedback" in spec:
        extra["dfc_feedback"] = FeedbackConfig(**spec["feedback"])
    if "variant" in spec:
        extra["dfc_variant"] = spec["variant"]
    if "updates" in spec:
        extra["dfc_updates"] = UpdateConfig(**spec["updates"])
    return extra


def run(row: str, activation: str, seed: int, epochs: int, data_dir: str, hidden: int,
        val_size: int = 1000) -> dict[str, Any]:
    """Train one row and return its record."""
    spec = ROWS[row]
    data = MNISTDataModule(data_dir, val_size=val_size, batch_size=128)
    data.setup("fit")
    n = min(256, len(data.val_set))
    probe = torch.stack([data.val_set[i][0] for i in range(n)])
    labels = torch.tensor([int(data.val_set[i][1]) for i in range(n)])
    pl.seed_everything(seed, verbose=False)
    if spec["kind"] == "bp":  # the papers' optimizer for BP: the forward rate DFC uses, lr / lambda
        paper = functools.partial(torch.optim.Adam, lr=9.266e-5 / DFC_LAMBDA, betas=(0.99, 0.99), eps=9.446e-8)
        model = LitMLP(activation, hidden, paper if spec.get("optimizer") == "paper" else None)
    else:
        model = DFCLitMLP(activation, hidden, dfc_network_attribute="model", **_dfc_arguments(spec))
    recorder = Recorder(probe, labels)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[recorder])
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    pretrain = model.dfc_schedule.pretrain if hasattr(model, "dfc_schedule") else None  # the epochs that ran
    return {"row": row, "activation": activation, "seed": seed, "epochs": epochs, "hidden": hidden,
            "curve_val_acc": recorder.curve, "alignment": recorder.alignment, "pretrain_epochs": pretrain,
            "pretrain_condition_2": recorder.pretrain_curve or None,
            "seconds": round(seconds, 1), "torch": torch.__version__}


def _stats(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{100 * mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})" if len(values) > 1 else f"{100 * mean:.1f}"


def _mean(values: list[float], fmt: str) -> str:
    return format(statistics.fmean(values), fmt) if values else "—"


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: validation accuracy per wake epoch (mean, min–max over seeds), pre-training
    epochs, and the alignment when the first wake epoch starts (means over seeds)."""
    lines = ["| activation | row | seeds | val. acc. after wake epoch 1 / 2 / ... (%) | pre-training epochs | "
             "Condition 2 | angle(Q, J^T) | angle(update, BP) | s per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["activation"], r["row"]) for r in records},
                  key=lambda k: (k[0], list(ROWS).index(k[1]) if k[1] in ROWS else len(ROWS)))
    for activation, row in keys:
        group = [r for r in records if (r["activation"], r["row"]) == (activation, row)]
        epochs = min(len(r["curve_val_acc"]) for r in group)
        curve = " / ".join(_stats([r["curve_val_acc"][k] for r in group]) for k in range(epochs))
        uses_q = ROWS.get(row, {}).get("variant") not in ("bp", "dfa")  # Q's alignment means nothing there
        first = [r["alignment"]["first_wake"] for r in group if uses_q and "first_wake" in r.get("alignment", {})]
        pre = sorted(r["pretrain_epochs"] for r in group if r["pretrain_epochs"] is not None)
        pre_text = (f"{pre[0]}–{pre[-1]}" if pre[0] != pre[-1] else str(pre[0])) if pre else "—"
        lines.append(
            f"| {activation} | {DESCRIPTIONS.get(row, row)} | {len(group)} | {curve} | {pre_text} | "
            f"{_mean([a['condition_2'] for a in first], '.3f')} | {_mean([a['angle_q_jt'] for a in first], '.0f')} | "
            f"{_mean([a['angle_update_bp'] for a in first if 'angle_update_bp' in a], '.0f')} | "
            f"{statistics.fmean(r['seconds'] for r in group):.0f} |")
    return "\n".join(lines) + "\n"


def measure_cost(batches_per_epoch: int = 43, repeats: int = 5) -> str:
    """The cost of ``feedback.pretrain_until``'s measure (Condition 2 on one batch of 128) against
    a pre-training epoch: the paper's MNIST network (784-256-256-256-10 tanh), float64."""
    from lightning_dfc import MLP, DFCModule
    from lightning_dfc.core.diagnostics import feedback_condition_2

    torch.manual_seed(0)
    module = DFCModule(MLP([784, 256, 256, 256, 10])).double()
    x, y = torch.randn(128, 784, dtype=torch.float64), torch.randint(0, 10, (128,))
    params = module.dfc_net.params()

    def seconds(f) -> float:
        f()
        start = time.perf_counter()
        for _ in range(repeats):
            f()
        return (time.perf_counter() - start) / repeats

    measure = seconds(lambda: feedback_condition_2(params, x))
    sleep = seconds(lambda: module.dfc_sleep_update(x, y, True))
    return (f"Condition 2 on 128 images: {measure * 1e3:.1f} ms; one pre-training batch: {sleep * 1e3:.1f} ms; "
            f"the measure is {100 * measure / (batches_per_epoch * sleep):.2f} % of a {batches_per_epoch}-batch epoch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--activations", nargs="+", default=["tanh", "relu"], choices=["tanh", "relu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=2, help="forward-weight (wake) epochs")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--val-size", type=int, default=1000, help="validation images split off the training set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=Path("first_hour.jsonl"))
    parser.add_argument("--output", type=Path, default=None, help="Markdown table")
    parser.add_argument("--resume", action="store_true", help="skip runs already in --results")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--measure-cost", action="store_true",
                        help="only time the pre-training's Condition 2 measure against a pre-training epoch")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_cost:
        print(measure_cost())
        return
    done = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    if not args.table_only:
        if not args.resume:
            done = []
            args.results.write_text("")
        seen = {(r["row"], r["activation"], r["seed"], r["epochs"], r["hidden"]) for r in done}
        for seed, activation, row in itertools.product(args.seeds, args.activations, args.rows):
            if (row, activation, seed, args.epochs, args.hidden) in seen:
                continue
            record = run(row, activation, seed, args.epochs, args.data_dir, args.hidden, args.val_size)
            done.append(record)
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{activation} {row} seed {seed}: {record['curve_val_acc']} {record['alignment']} "
                  f"({record['seconds']} s)", flush=True)
    text = table([r for r in done if r["epochs"] == args.epochs and r["hidden"] == args.hidden])
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
