"""How far our updates are from the authors' code in the exact numerics, with each fast lever
alone, and in the fast numerics, on the noise-free reference cases of ``tests/reference/``.

The reference cases are built in ``numerics: exact`` (float64, every Euler step, every outer
product: the published numerics). Each further column switches one lever of the fast preset
(``lightning_dfc.core.numerics``) on top of that, and the last one is the whole ``fast`` preset:
1 - cosine and the relative norm error against the authors' update (worst tensor), and the Euler
steps simulated. Noisy cases are left out: their fast updates use other noise draws (their
equality in distribution is ``benchmarks/numerics_equivalence.py``'s job).

    .venv/bin/python benchmarks/reference_margins.py [--output FILE.md]

(``tests/reference/test_reference.py`` asserts 1 - cos <= 1e-9 and a norm error <= 1e-6 in the ``exact``
column; ``tests/core/test_numerics.py`` the fast bounds, 1 - cos <= 1e-5 and norm <= 1e-3.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from harness import (  # noqa: E402
    UPDATE_CASES,
    agreement,
    batch,
    build_module,
    load,
    load_excerpt,
    our_update,
    settings_of,
)

from lightning_dfc.core.numerics import FAST  # noqa: E402

VARIANTS = {  # (numerics, the fast preset's levers set one at a time on top of it)
    "exact": ("exact", {}),
    "early stop": ("exact", {"early_stop": True, "tolerance": FAST.tolerance, "check_every": FAST.check_every}),
    f"outer_every {FAST.outer_every}": ("exact", {"outer_every": FAST.outer_every}),
    FAST.dtype: ("exact", {"dtype": FAST.dtype}),
    "fast": ("fast", {}),
}


def noise_free_simulated(record: dict) -> bool:
    """A forward case whose wake simulation has no noise (the cases the levers can be compared on
    draw for draw)."""
    dynamics = settings_of(record).get("dynamics")
    return record["kind"] == "forward" and dynamics is not None and not dynamics.get("sigma") \
        and not dynamics.get("sigma_output")


def margins(case: str, excerpt: dict) -> dict[str, tuple[float, float, float]]:
    """{variant: (worst 1 - cos, worst norm error, Euler steps simulated)} for one case."""
    record = load(case)
    out = {}
    if not noise_free_simulated(record):
        return out  # no noise-free wake simulation: nothing to compare draw for draw
    for name, (numerics, levers) in VARIANTS.items():
        settings = settings_of(record)
        model = build_module(record, numerics=numerics, dynamics={**settings["dynamics"], **levers})
        x, y = batch(record, excerpt, model)
        ours = our_update(record, model, x, y)
        worst = [agreement(a, b) for key, theirs in record["update"].items() for a, b in zip(ours[key], theirs)]
        steps = ours.get("stats", {}).get("steps", float("nan"))
        out[name] = (max(w[0] for w in worst), max(w[1] for w in worst), steps)
    return out


def clean_pretraining(case: str, excerpt: dict) -> list[float]:
    """Per-layer cosine between the published (default) and the ``clean`` Strong-DFC pre-training
    update on a pre-training case."""
    record = load(case)
    published = build_module(record)
    clean = build_module(record, feedback={**settings_of(record)["feedback"], "pretrain_mode": "clean"})
    x, y = batch(record, excerpt, published)
    pairs = zip(our_update(record, published, x, y)["Q"], our_update(record, clean, x, y)["Q"])
    return [1 - agreement(a, b)[0] for a, b in pairs]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    excerpt = load_excerpt()
    head = "| case | " + " | ".join(f"{v}: 1 - cos / norm error / steps" for v in VARIANTS) + " |"
    lines = [head, "|" + "---|" * (len(VARIANTS) + 1)]
    for case in UPDATE_CASES:
        result = margins(case, excerpt)
        if not result:
            continue
        cells = []
        for variant in VARIANTS:
            if variant not in result:
                cells.append("-")
                continue
            cos, norm, steps = result[variant]
            steps_text = "-" if steps != steps else f"{int(steps)}"
            cells.append(f"{cos:.1e} / {norm:.1e} / {steps_text}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "Strong-DFC pre-training, `pretrain_mode: clean` against the published one (cosine per Q_i):", ""]
    for case in (c for c in UPDATE_CASES if c.startswith("strong") and c.endswith("_pretrain")):
        lines.append(f"- {case}: " + ", ".join(f"{c:.3f}" for c in clean_pretraining(case, excerpt)))
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
