"""Our side of a reference case: the module the authors' config maps to, with their parameters,
and the batch they used. Shared by ``tests/reference/test_reference.py`` and
``benchmarks/reference_margins.py``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from authors import dfc_paper_settings, network_settings, strong_dfc_settings
from lightning_dfc import MLP, DFCModule
from make_reference import inputs

REFERENCE = Path(__file__).resolve().parent
CASES = sorted(p.stem for p in REFERENCE.glob("*.pt") if p.stem != "mnist_excerpt")
UPDATE_CASES = [c for c in CASES if not c.startswith("run_")]
RUN_CASES = [c for c in CASES if c.startswith("run_")]


def load(case: str) -> dict:
    """A reference case (see make_reference.py for its fields)."""
    return torch.load(REFERENCE / f"{case}.pt", weights_only=False)


def load_excerpt() -> dict:
    """The 256 MNIST images (uint8) and labels every case draws its inputs from."""
    return torch.load(REFERENCE / "mnist_excerpt.pt")


def settings_of(record: dict) -> dict:
    """Our DFCModule settings for the authors' config of a case (``authors.py``)."""
    if record["code"] == "deep_feedback_control":
        return dfc_paper_settings(record["config"])
    return strong_dfc_settings(record["config"], record["network_type"])


def build_module(record: dict, **overrides) -> DFCModule:
    """Our module for a reference case, with the authors' parameters before the update/run.

    ``overrides`` replace whole groups of the mapped settings (e.g. ``dynamics={...}``)."""
    settings = {**settings_of(record), **overrides}
    network = network_settings(record["config"])
    weights = record["before"]["W"]
    network["sizes"] = [weights[0].shape[1]] + [w.shape[0] for w in weights]  # the reduced inputs
    model = DFCModule(MLP(**network), **settings).double()
    feedback = record["before"].get("Q")
    if feedback is None and settings.get("variant") != "bp":  # only BP has no feedback weights to record
        raise KeyError(f"the reference record of variant {settings.get('variant')!r} has no feedback weights Q")
    with torch.no_grad():
        for lin, w, b in zip(model.dfc_net.layers, weights, record["before"]["b"], strict=True):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        for q, ref in zip(model.dfc_net.feedback, feedback or [], strict=feedback is not None):
            q.copy_(ref)
    return model


def batch(record: dict, excerpt: dict, model: DFCModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's inputs (the authors' preprocessing) and targets (labels, or the input for MSE)."""
    idx = record["indices"]
    x = inputs(excerpt["images"][idx], record["pool"])
    y = x.clone() if model.dfc_loss == "mse" else excerpt["labels"][idx]
    return x, y


def our_update(record: dict, model: DFCModule, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Our raw update of a per-update case, shaped like the record's ``update`` (W, b and/or Q).

    DFA is clipped per tensor to norm 1: the authors' DFA layers clip themselves (hard-coded)."""
    generator = torch.Generator().manual_seed(record["noise_seed"])
    if record["kind"] != "forward":
        grads, _ = model.dfc_sleep_update(x, y, pretraining=record["kind"] == "pretrain", generator=generator)
        return {"Q": grads}
    update = model.dfc_wake_update(x, y, generator)
    weights, biases = update.weights, update.biases
    if model.dfc_variant == "dfa":
        weights, biases = clipped_per_tensor(weights, 1.0), clipped_per_tensor(biases, 1.0)
    ours = {"W": weights, "b": biases}
    if update.feedback is not None:  # single phase: Q learns from the same simulation
        ours["Q"] = update.feedback
    ours["stats"] = update.stats
    return ours


def clipped_per_tensor(tensors: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    return [t * min(1.0, max_norm / (float(t.norm()) + 1e-6)) for t in tensors]


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(1 - cosine, |norm ratio - 1|) of two updates."""
    na, nb = float(ours.norm()), float(theirs.norm())
    cosine = float((ours.flatten() @ theirs.flatten()) / (na * nb))
    return 1 - cosine, abs(na / nb - 1)


@contextlib.contextmanager
def same_noise(seed: int):
    """Every ``torch.randn`` inside draws float64 numbers on the CPU from one generator seeded
    ``seed``, then casts and moves them to the dtype and device asked for: the same noise for a
    float64 and a float32 simulation, on a CPU and on a GPU."""
    original = torch.randn
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, dtype=None, device=None, **kwargs):
        kwargs.pop("generator", None)
        return original(*size, dtype=torch.float64, generator=generator, **kwargs).to(device=device, dtype=dtype)

    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = original
