"""Every method's update descends the loss, and the tests see it when it does not (issue 22).

For each registered method, a small network trained on one fixed batch: the training loss must
fall over a few steps, and with the update's sign flipped it must rise. The same through the
plain API (``DFC.backward`` writes the raw update, SGD steps) and through ``DFCModule`` in a
Lightning ``fit`` (learning rate over lambda, clipping, the schedule's pre-training and sleep
epochs). A wrong sign anywhere on the way, or a layer left out, fails here; the other training
tests check the numbers (against the authors' code, ``tests/reference/test_reference.py``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import DFC, MLP, METHODS, DFCModule, SimulationConfig

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=DT)
    return x, x[:, :3].argmax(1)


def _settings(variant: str) -> dict:
    dynamics = dict(steps=200, dt=0.05, alpha=0.01)
    feedback = None
    if variant == "strong_dfc":  # single phase: noisy dynamics, the high-pass feedback rule
        dynamics.update(sigma=0.01, tau_noise=0.1)
        feedback = dict(highpass_tau=0.5)
    return dict(variant=variant, target_stepsize=0.5, dynamics=SimulationConfig(**dynamics), feedback=feedback)


# BP's update is the loss gradient; the others' are lambda-scaled targets' local updates, and the
# Strong-DFC ones drive the output to the label itself (large updates): rates that make 20 steps count
LR = {"bp": 0.05, "strong_dfc": 0.05, "strong_dfc_ss": 0.05}


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def plain_run(variant: str, sign: float, steps: int = 20) -> tuple[float, float]:
    """Training loss before and after ``steps`` SGD steps along ``sign`` x the method's update."""
    torch.manual_seed(0)
    model = MLP([8, 12, 3]).double()
    dfc = DFC(model, generator=torch.Generator().manual_seed(1), **_settings(variant)).to(DT)
    if dfc.method.train_feedback:
        dfc.net.reset_feedback("weight_product")  # aligned, as after pre-training
    x, y = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=LR.get(variant, 2.0))
    start = _loss(model, x, y)
    for _ in range(steps):
        opt.zero_grad()
        dfc.backward(x, y)
        for p in model.parameters():
            p.grad.mul_(sign)
        opt.step()
    return start, _loss(model, x, y)


@pytest.mark.parametrize("variant", list(METHODS))
def test_the_plain_update_descends_and_its_flip_ascends(variant: str) -> None:
    start, end = plain_run(variant, 1.0)
    assert end < 0.9 * start, (start, end)
    start_flipped, end_flipped = plain_run(variant, -1.0)
    assert start_flipped == start and end_flipped > start, (start, end_flipped)


class _Flip(pl.Callback):
    """Negates the forward weights' update before each optimizer step (the control)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        forward = {id(p) for p in pl_module.dfc_net.forward_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in forward and p.grad is not None:
                    p.grad.neg_()


def module_run(variant: str, flip: bool, epochs: int = 10) -> tuple[float, float]:
    """Training loss before and after ``epochs`` wake epochs of a Lightning fit (with its
    pre-training and sleep epochs where the method trains feedback)."""
    torch.manual_seed(0)
    settings = _settings(variant)
    feedback = dict(settings.pop("feedback") or {}, pretrain_epochs=1, sleep_before=1, sleep_after=0)
    lr = LR.get(variant, 2.0) * (1.0 if variant == "bp" else settings["target_stepsize"])  # normalize_lr divides
    model = DFCModule(MLP([8, 12, 3]), feedback=feedback, updates=dict(clip_norm=None),
                      forward_optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": lr}}, **settings)
    if model.dfc_method.train_feedback:
        model.dfc_net.reset_feedback("weight_product")  # aligned from the start: few epochs count
    x, y = _batch()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", precision="64-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[_Flip()] if flip else [])
    start = _loss(model.double(), x, y)
    trainer.fit(model, loader)
    return start, _loss(model, x, y)


@pytest.mark.parametrize("variant", ["bp", "dfa", "dfc", "dfc_ssa_fixed", "strong_dfc", "strong_dfc_ss"])
def test_the_module_update_descends_and_its_flip_ascends(variant: str) -> None:
    start, end = module_run(variant, flip=False)
    assert end < 0.95 * start, (start, end)
    start_flipped, end_flipped = module_run(variant, flip=True)
    assert start_flipped == start and end_flipped > start, (start, end_flipped)


@pytest.mark.parametrize("variant", list(METHODS))
def test_every_layer_moves_along_the_loss_gradient(variant: str) -> None:
    """Per tensor (W_i, b_i), the method's update points along the loss gradient (feedback aligned
    as after pre-training): a layer left out (zero) or of the wrong sign fails. DFA's hidden
    layers follow its fixed random feedback, not the gradient: for them only that they move; its
    output layer is the gradient's."""
    torch.manual_seed(0)
    model = MLP([8, 12, 3]).double()
    dfc = DFC(model, generator=torch.Generator().manual_seed(1), **_settings(variant)).to(DT)
    if dfc.method.train_feedback:
        dfc.net.reset_feedback("weight_product")
    x, y = _batch()
    update = dfc.update(x, y).tensors()
    gradient = DFC(model, variant="bp").update(x, y).tensors()
    assert len(update) == len(gradient) == 4
    for i, (u, g) in enumerate(zip(update, gradient)):
        assert float(u.norm()) > 0, f"tensor {i} does not move"
        cosine = float(F.cosine_similarity(u.flatten(), g.flatten(), dim=0))
        if variant != "dfa":
            assert cosine > 0.3, (i, cosine)  # measured: >= 0.9 (DFC family), >= 0.4 (Strong-DFC)
        elif i >= 2:
            assert cosine > 0.99, (i, cosine)
