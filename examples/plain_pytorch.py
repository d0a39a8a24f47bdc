"""DFC in a plain PyTorch loop (no Lightning): lightning_dfc.DFC writes .grad, any optimizer steps.

    python examples/plain_pytorch.py --data-dir ../shared/data --batches 200

Trains the paper's MNIST network (784-256-256-256-10 tanh, float64) with DFC: feedback
pre-training (sleep) batches until the feedback weights are aligned (Condition 2, measured every
20 batches, reaches --pretrain-until; at most --pretrain batches), then wake batches, each followed
by one sleep batch. Without MNIST under --data-dir (torchvision's layout, <dir>/MNIST/raw) it uses
random data, to show the API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_dfc import DFC, MLP, SimulationConfig


def batches(data_dir: str, batch_size: int):
    """(x, y) batches: MNIST if its raw files are there, else random data of the same shapes."""
    if (Path(data_dir) / "MNIST" / "raw").is_dir():
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        data = datasets.MNIST(data_dir, train=True, download=False, transform=tf)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
        while True:
            for x, y in loader:
                yield x.flatten(1).double(), y
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(batch_size, 784, generator=g, dtype=torch.float64)
        yield x, x[:, :10].argmax(1)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    """Runs the example; returns what it printed: ``condition_2`` (before and after the
    pre-training), ``loss`` (the training loss of every wake batch, before its update) and
    ``loss_after`` (the same batch's loss after the update: a DFC step descends it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batches", type=int, default=200, help="wake batches")
    parser.add_argument("--pretrain", type=int, default=2000, help="feedback pre-training batches, at most")
    parser.add_argument("--pretrain-until", type=float, default=0.95, help="Condition 2 that ends the pre-training")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    torch.manual_seed(42)
    model = MLP([784, 256, 256, 256, 10]).double()
    lam = 0.07794  # the paper's target stepsize lambda
    # library defaults for speed (early stop, outer_every 10); the paper's exact settings are in
    # examples/mnist_dfc.yaml
    dfc = DFC(model, variant="dfc", target_stepsize=lam, dynamics=SimulationConfig(early_stop=True)).to(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=dfc.forward_lr(9.266e-5), betas=(0.99, 0.99), eps=9.446e-8)  # / lam
    fb_opt = torch.optim.Adam(dfc.feedback_parameters(), lr=5.265e-4, betas=(0.99, 0.99), eps=1.561e-6,
                              weight_decay=1e-3)
    data = batches(args.data_dir, args.batch_size)

    probe, _ = next(data)
    pre_opt = torch.optim.Adam(dfc.feedback_parameters(), lr=3.170e-4, betas=(0.99, 0.99), eps=1.561e-6,
                               weight_decay=1e-3)
    aligned = initial = dfc.condition_2(probe)
    for done in range(1, args.pretrain + 1):  # feedback pre-training: sleep batches until aligned
        x, _ = next(data)
        pre_opt.zero_grad()
        dfc.sleep(x, pretraining=True)
        pre_opt.step()
        if done % 20 == 0:
            aligned = dfc.condition_2(probe)
            if aligned >= args.pretrain_until:
                break
    print(f"pre-training: {done} batches, Condition 2 = {aligned:.3f} (from {initial:.3f})")
    history = {"condition_2": [initial, aligned], "loss": [], "loss_after": []}
    for step in range(1, args.batches + 1):
        x, y = next(data)
        opt.zero_grad()
        loss = dfc.backward(x, y)  # the DFC update in .grad of W_i, b_i, clipped (updates.clip_norm)
        wake_steps = dfc.last_stats.get("steps", 0)
        history["loss"].append(float(loss))
        opt.step()
        with torch.no_grad():
            history["loss_after"].append(float(torch.nn.functional.cross_entropy(model(x), y)))
        fb_opt.zero_grad()
        dfc.sleep(x)  # one sleep batch: the feedback weights' update in their .grad
        fb_opt.step()
        if step % 20 == 0 or step == args.batches:
            print(f"batch {step}: loss {float(loss):.4f} -> {history['loss_after'][-1]:.4f} after its update, "
                  f"wake simulation {wake_steps:.0f} steps")
    return history


if __name__ == "__main__":
    main()
