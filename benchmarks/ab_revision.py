"""What a change costs or saves: an older revision's whole package against the working tree's,
alternating in one process on the same passes, network and batch (the machine's drift cancels).

The old revision's ``lightning_dfc`` is exported (``git archive``) into a temporary folder under
another name and imported beside today's (the package imports itself only relatively). Each side
builds its own module for the pass, with the same weights: the papers' 784-256-256-256-10 tanh
network (seed 0, feedback near the weight product) and each reference case's published settings
in the chosen numerics (``benchmarks/levers.py``'s passes). Prints the median per call of each side
and old/new (above 1: the working tree is faster).

    python benchmarks/ab_revision.py --old 1234072 --repeats 15
    python benchmarks/ab_revision.py --old HEAD~1 --passes "DFC sleep" "DFC wake" --numerics fast

(``benchmarks/ab_simulate.py`` does the same for revisions from before the core/shell split.)
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests" / "reference"))

from levers import PASSES, alternating, call_of  # noqa: E402
from numerics_equivalence import inputs, load_excerpt, module  # noqa: E402

import lightning_dfc  # noqa: E402

def old_package(revision: str):
    """``lightning_dfc`` at ``revision``, imported as ``lightning_dfc_<sha>``."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", sha, "lightning_dfc"], cwd=REPO, check=True,
                             capture_output=True).stdout
    root = Path(tempfile.mkdtemp())
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    name = f"lightning_dfc_{sha}"
    (root / "lightning_dfc").rename(root / name)
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="the older revision (any git revision)")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES), metavar="PASS")
    parser.add_argument("--numerics", choices=["fast", "exact"], default="fast")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per side and pass")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sides = {"old": old_package(args.old), "new": lightning_dfc}
    excerpt = load_excerpt()
    x, y = inputs(excerpt["images"][:128], pool=1), excerpt["labels"][:128]
    results = []
    for label in args.passes:
        case, phase, _ = PASSES[label]
        times = alternating({side: call_of(module(case, args.numerics, package=package), phase, x, y)
                             for side, package in sides.items()}, args.repeats)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        results.append((label, old, new))
        print(f"{label:32s} old {old:.4f} s  new {new:.4f} s  old/new {old / new:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
