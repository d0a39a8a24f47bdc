"""How far our updates are from the authors' code, with the published settings and with our
speed options, on the reference cases of ``tests/reference/``.

The published runs simulate every step and accumulate every step's outer product
(``early_stop: false, outer_every: 1`` in the example configs). The library's defaults are faster
approximations for the continuous DFC update: an early stop once the state has settled, with the
remaining steps added as copies of the settled state, and the presynaptic sum's O(lambda^2) part
sampled every 10th step (steady-state updates keep the early stop off by default: they use the
final state itself). This script measures what each costs in agreement, per reference case (worst
tensor shown): 1 - cosine and the relative norm error against the authors' update, and the Euler
steps simulated. Noisy simulations never stop early and always sum every step.

    .venv/bin/python benchmarks/reference_margins.py [--output FILE.md]

(The settings the tests use are the ``published`` column; ``tests/test_reference.py`` asserts
1 - cos <= 1e-9 and a norm error <= 1e-6 there.)
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

VARIANTS = {
    "published": {},
    "early stop on": {"early_stop": True},
    "outer_every 10": {"outer_every": 10},
    # early_stop None: on for the continuous DFC update, off for the steady-state ones
    "library defaults": {"early_stop": None, "outer_every": 10},
}


def margins(case: str, excerpt: dict) -> dict[str, tuple[float, float, float]]:
    """{variant: (worst 1 - cos, worst norm error, Euler steps simulated)} for one case."""
    record = load(case)
    out = {}
    for name, dynamics in VARIANTS.items():
        model = build_module(record)
        if dynamics:
            if record["kind"] != "forward" or model.dfc_spec.rule not in ("dfc", "dfc_ss"):
                continue  # no noise-free wake simulation: nothing to approximate
            settings = settings_of(record)
            model = build_module(record, dynamics={**settings["dynamics"], **dynamics})
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
