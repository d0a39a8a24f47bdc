"""What the benchmark scripts share: composing a run's LightningCLI arguments, fitting and testing
at the best checkpoint, the JSON-lines results file, the machine description, Markdown tables.

Used by ``table1.py`` and ``learning_curves.py`` (both put this folder on ``sys.path``); not a
public module.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The DFC paper's Table 1 (Meulemans et al. 2021; shared/reference/dfc_reference.md section 7), mean and
# std over 5 seeds; full data sets (55,000 training images), 100 epochs (autoencoder 25). Classification:
# test error in %; autoencoder: test loss; MNIST-train: train loss. Only these four methods are published.
DFC_TABLE1: dict[tuple[str, str], tuple[float, float]] = {
    ("mnist", "bp"): (2.08, 0.15), ("mnist", "dfc"): (2.25, 0.094),
    ("mnist", "dfc_fixed"): (2.47, 0.12), ("mnist", "dfa"): (2.69, 0.11),
    ("fmnist", "bp"): (10.60, 0.34), ("fmnist", "dfc"): (11.17, 0.27),
    ("fmnist", "dfc_fixed"): (11.62, 0.30), ("fmnist", "dfa"): (11.38, 0.25),
    ("mnist_autoencoder", "bp"): (9.42e-2, 0.09e-2), ("mnist_autoencoder", "dfc"): (11.28e-2, 0.18e-2),
    ("mnist_autoencoder", "dfc_fixed"): (33.37e-2, 0.60e-2), ("mnist_autoencoder", "dfa"): (29.95e-2, 0.36e-2),
    ("mnist_train", "bp"): (1.53e-7, 0.19e-7), ("mnist_train", "dfc"): (7.61e-8, 0.65e-8),
    ("mnist_train", "dfc_fixed"): (1.30e-6, 0.15e-6), ("mnist_train", "dfa"): (7.09e-7, 1.11e-7),
}


class UsageError(ValueError):
    """A bad command-line argument (reported by the parser)."""


# ------------------------------------------------------------------------------------ one run
def cli_args(
    configs: Sequence[Path],
    *,
    seed: int,
    root: Path,
    epochs: int | None = None,
    data: dict[str, Any] | None = None,
    download: bool = False,
    logger_name: str | None = None,
    override: Sequence[str] = (),
) -> list[str]:
    """LightningCLI arguments of one run: the config files (later ones override earlier ones), the
    seed, all outputs under ``root``, no progress bar, the data module's arguments that are not
    ``None``, the forward-weight epochs (``None``: the config's own), then ``override`` (last, so it
    wins)."""
    out = [arg for config in configs for arg in ("--config", str(config))]
    out += [
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.init_args.download={'true' if download else 'false'}",
        *(f"--data.init_args.{k}={v}" for k, v in (data or {}).items() if v is not None),
    ]
    if logger_name is not None:
        out.append(f"--trainer.logger.init_args.name={logger_name}")
    if epochs is not None:
        out.append(f"--trainer.max_epochs={epochs}")
    return out + list(override)


def checkpoint_callback(trainer):
    """The trainer's ``ModelCheckpoint`` (the configs' best-validation checkpoint)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))


def fit_and_test(trainer, model, datamodule, ckpt_path: str | None = None) -> dict[str, Any]:
    """``fit`` (resumed from ``ckpt_path`` if given), then ``test`` at the best checkpoint (the
    config's ``ModelCheckpoint``).

    Returns ``fit_seconds``, ``monitor``, ``best_score``, ``best_epoch`` (the Lightning epoch stored
    in the best checkpoint), ``tested`` (the test metrics) and ``test_seconds``. Exceptions (a
    diverging run, missing data) are the caller's to handle."""
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    checkpoint = checkpoint_callback(trainer)
    if checkpoint.best_model_score is None or not checkpoint.best_model_path:
        raise RuntimeError(f"no best checkpoint (monitor {checkpoint.monitor!r} never logged)")
    best_score = float(checkpoint.best_model_score)
    best_epoch = int(torch_load_epoch(checkpoint.best_model_path))
    start = time.perf_counter()
    tested = trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False)[0]
    return {"fit_seconds": fit_seconds, "monitor": checkpoint.monitor, "best_score": best_score,
            "best_epoch": best_epoch, "tested": tested, "test_seconds": time.perf_counter() - start}


def torch_load_epoch(path: str) -> int:
    """The (trainer) epoch stored in a checkpoint."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, torch, torch threads, GPU (if any) of this process."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_text(m: dict[str, Any]) -> str:
    return (f"{m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}, "
            f"{m['threads']} thread(s)" + (f", {m['cuda']}" if m.get("cuda") else ""))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ results file
def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines results file (``[]`` if it does not exist)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}:{number}: not a JSON line ({err}); remove the line and --resume") from err
    return records


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line (the file is complete after every run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def check_results_file(results: Path, resume: bool, table_only: bool) -> None:
    """``--table-only`` needs the file; a run must not silently add to a file that holds runs."""
    if table_only and not results.is_file():
        raise UsageError(f"--table-only: results file {str(results)!r} does not exist")
    if not resume and not table_only and results.is_file() and results.stat().st_size:
        raise UsageError(
            f"results file {str(results)!r} already holds runs: pass --resume to continue it, "
            "--table-only to only make the table, or another --results / --output"
        )


def finished_runs(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable],
                  statuses: Sequence[str] = ("ok", "failed")) -> dict[Hashable, dict[str, Any]]:
    """The last record with one of ``statuses`` per ``key(record)`` (what ``--resume`` skips)."""
    done = {}
    for rec in records:
        if rec.get("status") in statuses:
            done[key(rec)] = rec
    return done


def check_same_settings(results: Path, what: str, old: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to resume a run recorded with other settings."""
    recorded = {k: old.get(k) for k in settings}
    if recorded != settings:
        raise SystemExit(
            f"{results}: {what} was run with {recorded}, not {settings}; use another --results file "
            "or the same settings"
        )


# ------------------------------------------------------------------------------------ tables
def markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_mean_std(values: Sequence[float], digits: int = 2, spec: str = "f") -> str:
    """``mean ± std`` (just ``mean`` for one value); non-finite values are shown as such."""
    if any(not math.isfinite(v) for v in values):
        return "non-finite"
    mean, std = mean_std(values)
    text = f"{mean:.{digits}{spec}}"
    return text if std is None else f"{text} ± {std:.{digits}{spec}}"
