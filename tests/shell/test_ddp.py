"""DDP on the CPU (2 gloo processes): updates are averaged, ranks stay identical, and a 2-process
run equals a 1-process run on the same global batches."""

import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(sys.platform != "linux", reason="ddp_fork needs Linux"),
]

N, FEATURES, CLASSES = 64, 10, 3


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g, dtype=torch.float64)
    y = (x[:, :CLASSES] * 3).argmax(1)
    return TensorDataset(x, y)


def make_model(variant: str, numerics: str = "exact", module: type = DFCModule, **feedback) -> DFCModule:
    """``numerics: exact`` by default: the 1- and 2-process runs then agree to rounding (the fast
    numerics stop each half batch's simulation on its own: test_fast_numerics_two_processes...)."""
    torch.manual_seed(1)
    sleep = SimulationConfig(dt=0.005, steps=10, k_p=0.1, alpha=0.5, tau_v=0.01, tau_apical=0.1,
                             proactive=False, sigma=0.02, early_stop=False)
    feedback = {"pretrain_epochs": 1, "sleep_before": 1, "sleep_after": 0, "simulation": sleep, **feedback}
    return module(
        MLP([FEATURES, 12, 12, CLASSES]),
        variant=variant,
        target_stepsize=0.1,
        dynamics=SimulationConfig(steps=60, alpha=0.05, early_stop=False),
        feedback=FeedbackConfig(**feedback),
        numerics=numerics,
    ).double()  # float64 in the parent process too, where ddp_fork loads rank 0's weights back


class InterleavedData(pl.LightningDataModule):
    """Global batch k = samples 16k..16k+15 on any number of ranks (rank r takes every
    world-th sample), so 1- and 2-process runs see the same global batches."""

    def train_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset(), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset(), batch_size=16 // world, sampler=sampler)


class RankChecksum(Callback):
    """Logs min and max over ranks of a checksum of all weights (equal iff ranks agree)."""

    def on_train_epoch_end(self, trainer, pl_module):
        total = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(pl_module.parameters()))
        pl_module.log("checksum_min", total, reduce_fx="min", sync_dist=True)
        pl_module.log("checksum_max", total, reduce_fx="max", sync_dist=True)
        skipped = torch.tensor(float(sum(pl_module._dfc_skipped_total.values())), dtype=torch.float64)
        pl_module.log("skipped_min", skipped, reduce_fx="min", sync_dist=True)
        pl_module.log("skipped_max", skipped, reduce_fx="max", sync_dist=True)


def fit(model: DFCModule, devices: int, strategy: str, tmp_path) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=2,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RankChecksum()],
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=InterleavedData())
    return trainer


@pytest.mark.parametrize("variant", ["dfc_fixed", "dfc_ssa_fixed", "dfa", "bp"])
def test_two_processes_equal_one_process(variant, tmp_path):
    single = make_model(variant)
    fit(single, 1, "auto", tmp_path)
    double = make_model(variant)
    trainer = fit(double, 2, "ddp_fork", tmp_path)
    assert trainer.callback_metrics["checksum_min"] == trainer.callback_metrics["checksum_max"]
    for a, b in zip(single.network.parameters(), double.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert any(not torch.equal(a, b) for a, b in zip(single.network.parameters(), make_model(variant).network.parameters()))


def test_fast_numerics_two_processes_equal_one_process_within_their_bound(tmp_path):
    """Both cores for the fast numerics: 2 processes of half a batch each train like 1 process on
    the whole batch. Each half stops its simulation early on its own and simulates in float32, so
    the weights agree to the fast numerics' bound on an update (relative 1e-3 of how far they
    moved), not to rounding."""
    start = make_model("dfc_fixed", numerics="fast")
    single = make_model("dfc_fixed", numerics="fast")
    fit(single, 1, "auto", tmp_path)
    double = make_model("dfc_fixed", numerics="fast")
    trainer = fit(double, 2, "ddp_fork", tmp_path)
    assert trainer.callback_metrics["checksum_min"] == trainer.callback_metrics["checksum_max"]
    for a, b, w in zip(single.network.parameters(), double.network.parameters(), start.network.parameters()):
        moved = float((a - w).norm())
        assert moved > 0
        assert float((a - b).norm()) <= 1e-3 * moved


def test_ranks_stay_identical_with_sleep_phases(tmp_path):
    trainer = fit(make_model("dfc"), 2, "ddp_fork", tmp_path)
    assert trainer.callback_metrics["wake_epoch"] == 2  # the second of 2 wake epochs ran
    assert trainer.callback_metrics["checksum_min"] == trainer.callback_metrics["checksum_max"]


def test_sharded_strategy_is_refused():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    from lightning_dfc.shell.distributed import check_strategy

    check_strategy(SingleDeviceStrategy("cpu"))
    check_strategy(DDPStrategy())
    with pytest.raises(ValueError, match="FSDPStrategy strategy"):  # FSDP needs a GPU to start a Trainer
        check_strategy(FSDPStrategy())


def test_mixed_precision_is_refused(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=1, logger=False)
    with pytest.raises(ValueError, match="64-true"):
        trainer.fit(make_model("dfc_fixed"), DataLoader(dataset(), batch_size=16))


class MeasuredCondition2(Callback):
    """Logs min and max over ranks of the Condition 2 each rank's module decided with (measured
    at the end of the pre-training epoch; a callback's epoch-end hook runs before the module's)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            value = torch.tensor(pl_module._dfc_pretrain_condition_2, dtype=torch.float64)
            pl_module.log("c2_min", value, reduce_fx="min", sync_dist=True)
            pl_module.log("c2_max", value, reduce_fx="max", sync_dist=True)


def test_pretraining_until_aligned_ends_on_every_rank_at_once(tmp_path):
    """Each rank measures Condition 2 on its own first batch and the ranks average it: every rank
    decides with the same value, so the pre-training ends at the same epoch on all of them (here
    after 1 of at most 3 epochs) and the weights stay identical."""
    model = make_model("dfc", pretrain_epochs=3, pretrain_until=1e-3)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, precision="64-true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[RankChecksum(), MeasuredCondition2()],
                         default_root_dir=tmp_path, use_distributed_sampler=False)
    trainer.fit(model, datamodule=InterleavedData())
    assert trainer.callback_metrics["wake_epoch"] == 2
    assert trainer.callback_metrics["checksum_min"] == trainer.callback_metrics["checksum_max"]
    assert 0 < trainer.callback_metrics["c2_min"] == trainer.callback_metrics["c2_max"] < 1


class DivergesOnLastRank(DFCModule):
    """Returns a NaN update on the last rank (of however many) for the global batch 1 of every
    phase, as a diverged simulation would: the divergence check must skip that batch on every
    rank, or the ranks would part."""

    def training_step(self, batch, batch_idx):
        self.batch_now = batch_idx
        return super().training_step(batch, batch_idx)

    def _poisoned(self) -> bool:
        return self.trainer.global_rank == self.trainer.world_size - 1 and self.batch_now == 1

    def dfc_wake_update(self, x, y, generator=None, world_size=1):
        update = super().dfc_wake_update(x, y, generator, world_size)
        if self._poisoned():
            update.weights[0] = torch.full_like(update.weights[0], float("nan"))
        return update

    def dfc_sleep_update(self, x, y, pretraining, generator=None):
        grads, stats = super().dfc_sleep_update(x, y, pretraining, generator)
        if self._poisoned():
            grads = [torch.full_like(grads[0], float("nan")), *grads[1:]]
        return grads, stats


def test_a_batch_diverged_on_one_rank_is_skipped_on_every_rank(tmp_path):
    """One all-reduce per step carries the updates and the divergence flag (``sync_step``): when
    only the last rank's simulation diverges, both ranks skip the batch, count it and stay
    identical (with sleep phases: pre-training, then 2 x (sleep, wake), batch 1 of each skipped),
    and a wake-only run equals a 1-process run that skips the same global batches."""
    trainer = fit(make_model("dfc", module=DivergesOnLastRank), 2, "ddp_fork", tmp_path)
    assert trainer.callback_metrics["checksum_min"] == trainer.callback_metrics["checksum_max"]
    assert trainer.callback_metrics["skipped_min"] == trainer.callback_metrics["skipped_max"] == 5

    single = make_model("dfc_fixed", module=DivergesOnLastRank)
    fit(single, 1, "auto", tmp_path)
    assert single._dfc_skipped_total == {"wake": 2, "sleep": 0}
    double = make_model("dfc_fixed", module=DivergesOnLastRank)
    trainer = fit(double, 2, "ddp_fork", tmp_path)
    assert trainer.callback_metrics["skipped_min"] == trainer.callback_metrics["skipped_max"] == 2
    for a, b in zip(single.network.parameters(), double.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    unpoisoned = make_model("dfc_fixed")
    fit(unpoisoned, 1, "auto", tmp_path)
    assert any(not torch.equal(a, b) for a, b in zip(single.network.parameters(), unpoisoned.network.parameters()))
    assert all(torch.isfinite(p).all() for p in double.parameters())
