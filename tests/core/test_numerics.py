"""The fast numerics learn like the exact (published) ones.

* **Noise-free passes** (DFC, DFC-SS, DFC-SSA wake, trained or fixed feedback; Strong-DFC's
  two-phase wake): every update tensor of ``fast`` within 1 - cos <= 1e-5 and a relative norm
  difference <= 1e-3 of the exact update. On every noise-free reference case, against the update
  the authors' own code recorded; and on the papers' 784-256-256-256-10 network with feedback
  near the weight product and with feedback pre-trained by the fast sleep phase.
* **Noisy passes** (DFC's sleep phase, Strong-DFC's pre-training and two-phase sleep, Strong-DFC's
  single-phase wake with its feedback update, DFC with noise): over 60 noise seeds each, the mean
  update of ``fast`` equals ``exact``'s within the standard error of their difference (per
  tensor: |mean_fast - mean_exact| <= 1.5 |standard error|, the norm over the tensor's elements,
  about 1 for equal means), and the spread agrees within 10 % (per-element standard deviations:
  their norms, and the median of their ratios). On the reference cases' networks; the papers'
  network: ``benchmarks/numerics_equivalence.py``, recorded in ``docs/numerics.md``.
* **The switch**: one setting, ``numerics``, for the module, the mixin and the plain API, from
  Python and from the CLI.

Whole training runs, fast against exact: ``docs/benchmarks.md`` (learning curves over seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_dfc import DFC, MLP, DFCModule
from lightning_dfc.core.numerics import EXACT, FAST, NUMERICS, resolve_numerics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from harness import UPDATE_CASES, agreement, batch, build_module, load, load_excerpt, settings_of  # noqa: E402
from make_reference import inputs, near_weight_product  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COSINE = 1e-5  # 1 - cos, per tensor
NORM = 1e-3  # relative norm difference, per tensor
SEEDS = 60
SPREAD = 0.10


@pytest.fixture(scope="module")
def excerpt() -> dict:
    return load_excerpt()


def assert_within_bounds(fast: list[torch.Tensor], exact: list[torch.Tensor], what: str) -> None:
    assert len(fast) == len(exact) > 0
    for i, (a, b) in enumerate(zip(fast, exact)):
        one_minus_cos, norm = agreement(a.double(), b.double())
        assert one_minus_cos <= COSINE, f"{what}[{i}]: 1 - cos = {one_minus_cos:.2e}"
        assert norm <= NORM, f"{what}[{i}]: norm off by {norm:.2e}"


def update_tensors(update) -> list[torch.Tensor]:
    return update.tensors() + (update.feedback or [])


# ------------------------------------------------------------------ noise-free passes

def _noise_free_simulated(case: str) -> bool:
    settings = settings_of(load(case))
    dynamics = settings.get("dynamics")
    return load(case)["kind"] == "forward" and dynamics is not None and not dynamics.get("sigma") \
        and not dynamics.get("sigma_output")


NOISE_FREE = [c for c in UPDATE_CASES if _noise_free_simulated(c)]


@pytest.mark.parametrize("case", NOISE_FREE)
def test_fast_noise_free_update_is_within_bounds_of_the_authors(case: str, excerpt: dict) -> None:
    record = load(case)
    model = build_module(record, numerics="fast")
    assert model.dfc_numerics is FAST
    x, y = batch(record, excerpt, model)
    update = model.dfc_wake_update(x, y, torch.Generator().manual_seed(0))
    theirs = record["update"]
    ours = {"W": update.weights, "b": update.biases}
    for name in ("W", "b"):
        assert_within_bounds(ours[name], theirs[name], f"{case} {name}")
    if "converged" in record:
        assert update.stats["non_converged"] == x.shape[0] - record["converged"]


PAPER = [784, 256, 256, 256, 10]


@pytest.fixture(scope="module")
def paper_batch(excerpt: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return inputs(excerpt["images"][:128], pool=1), excerpt["labels"][:128]


def paper_module(case: str, numerics: str, feedback: str, x: torch.Tensor) -> DFCModule:
    """The papers' network with a reference case's published settings; feedback ``weight_product``
    (near the product, 30 % noise: as after pre-training) or ``slept`` (pre-trained for 40 sleep
    updates of the fast numerics from Xavier-normal feedback)."""
    record = load(case)
    settings = settings_of(record)
    settings["numerics"] = numerics
    torch.manual_seed(0)
    network = MLP(PAPER, activation="tanh")
    model = DFCModule(network, **settings).double()
    with torch.no_grad():
        if feedback == "weight_product" and model.dfc_method.feedback_init != "weight_product":
            for q, value in zip(model.dfc_net.feedback, near_weight_product(torch, [w.float() for w in model.dfc_net.params().weights])):
                q.copy_(value)
        if feedback == "slept":
            for q, value in zip(model.dfc_net.feedback, SLEPT[case]):
                q.copy_(value)
    return model


SLEPT: dict[str, list[torch.Tensor]] = {}


def pretrain_feedback(case: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """40 sleep updates with the published pre-training optimizer, fast numerics, plain API."""
    record = load(case)
    settings = settings_of(record)
    torch.manual_seed(0)
    network = MLP(PAPER, activation="tanh").double()
    dfc = DFC(network, settings["variant"], loss=settings["loss"], target_stepsize=settings.get("target_stepsize", 0.1),
              dynamics=settings["dynamics"], feedback=settings["feedback"], updates=settings["updates"],
              generator=torch.Generator().manual_seed(3), numerics="fast")
    args = settings["pretrain_optimizer"]["init_args"]
    opt = torch.optim.Adam(dfc.feedback_parameters(), **args)
    for step in range(40):
        half = slice(64 * (step % 2), 64 * (step % 2) + 64)
        dfc.sleep(x[half], y[half], pretraining=True)
        opt.step()
    return [q.detach().clone() for q in dfc.net.feedback]


@pytest.mark.parametrize("feedback", ["weight_product", "slept"])
@pytest.mark.parametrize("case", ["dfc", "dfc_fixed", "dfc_ss", "dfc_ssa", "strong_dfc_ss_wake"])
def test_fast_noise_free_update_on_the_papers_network(case: str, feedback: str, paper_batch) -> None:
    x, y = paper_batch
    if feedback == "slept":
        if case in ("dfc_fixed",):
            pytest.skip("fixed feedback is not pre-trained")
        if case not in SLEPT:
            SLEPT[case] = pretrain_feedback(case, x, y)
    exact = paper_module(case, "exact", feedback, x).dfc_wake_update(x, y)
    fast_model = paper_module(case, "fast", feedback, x)
    fast = fast_model.dfc_wake_update(x, y)
    assert_within_bounds(fast.tensors(), exact.tensors(), f"{case} ({feedback})")
    assert fast.stats["non_converged"] == exact.stats["non_converged"]
    if case in ("dfc", "dfc_ss") and feedback == "weight_product":
        assert fast.stats["steps"] < exact.stats["steps"] / 10  # it stopped early, and still agrees


# ------------------------------------------------------------------ noisy passes

NOISY = [
    ("dfc_sleep", "sleep"),
    ("dfc_sleep_autoencoder", "sleep"),
    ("strong_dfc_pretrain", "pretrain"),
    ("strong_dfc_ss_pretrain", "pretrain"),
    ("strong_dfc_ss_sleep", "sleep"),
    ("strong_dfc_wake", "wake"),
    ("dfc", "noisy wake"),  # DFC with the Strong-DFC runs' wake noise (examples/mnist_dfc_noise.yaml)
    ("dfc_noisy_wake", "wake"),  # strong_dfc's DFC command with --noisy_dynamics (sigma 0.035)
    ("dfc_noisy_sleep", "sleep"),  # its sleep phase at sigma 0.035: the linearised sleep at 23x DFC's sigma
]
WAKE_NOISE = {"sigma": 4.278964325349612e-3, "sigma_output": 2.9713880264874388e-2, "tau_noise": 0.07}


def noisy_updates(case: str, kind: str, numerics: str, excerpt: dict) -> list[list[torch.Tensor]]:
    record = load(case)
    overrides = {"numerics": numerics}
    if kind == "noisy wake":
        dynamics = dict(settings_of(record)["dynamics"], **WAKE_NOISE)
        overrides.update(dynamics=dynamics, updates={**settings_of(record)["updates"], "exclude_non_converged": False})
    model = build_module(record, **overrides)
    x, y = batch(record, excerpt, model)
    out = []
    for seed in range(SEEDS):
        generator = torch.Generator().manual_seed(seed)
        if kind in ("sleep", "pretrain"):
            grads, _ = model.dfc_sleep_update(x, y, pretraining=kind == "pretrain", generator=generator)
            out.append([g.double() for g in grads])
        else:
            out.append([t.double() for t in update_tensors(model.dfc_wake_update(x, y, generator))])
    return out


@pytest.mark.parametrize(("case", "kind"), NOISY, ids=[f"{c}-{k}" for c, k in NOISY])
def test_fast_noisy_update_has_the_exact_mean_and_spread(case: str, kind: str, excerpt: dict) -> None:
    exact = noisy_updates(case, kind, "exact", excerpt)
    fast = noisy_updates(case, kind, "fast", excerpt)
    for i in range(len(exact[0])):
        e = torch.stack([u[i] for u in exact])
        f = torch.stack([u[i] for u in fast])
        difference = f.mean(0) - e.mean(0)
        standard_error = torch.sqrt((f.var(0) + e.var(0)) / SEEDS)
        if float(standard_error.norm()) == 0:  # not driven by the noise (a frozen Q_L, ...)
            torch.testing.assert_close(f.mean(0), e.mean(0), rtol=1e-3, atol=1e-12)
            continue
        ratio = float(difference.norm() / standard_error.norm())
        assert ratio <= 1.5, f"{case} {kind} tensor {i}: mean differs by {ratio:.2f} standard errors"
        spread_f, spread_e = f.std(0), e.std(0)
        assert abs(float(spread_f.norm() / spread_e.norm()) - 1) <= SPREAD, (case, kind, i)
        used = spread_e > 1e-6 * float(spread_e.max())
        median = float((spread_f[used] / spread_e[used]).median())
        assert abs(median - 1) <= SPREAD, f"{case} {kind} tensor {i}: median spread ratio {median:.3f}"


def test_the_mean_test_can_fail(excerpt: dict) -> None:
    """A biased update (fast numerics with a 10 % larger noise level) fails the mean test: the
    comparison above detects a difference of the size of the noise's effect."""
    record = load("dfc_sleep")
    settings = settings_of(record)
    feedback = dict(settings["feedback"])
    feedback["simulation"] = {**feedback["simulation"], "sigma": feedback["simulation"]["sigma"] * 1.1}
    biased = build_module(record, numerics="fast", feedback=feedback)
    exact = build_module(record, numerics="exact")
    x, y = batch(record, excerpt, exact)
    e = torch.stack([exact.dfc_sleep_update(x, y, False, torch.Generator().manual_seed(s))[0][0] for s in range(SEEDS)])
    f = torch.stack([biased.dfc_sleep_update(x, y, False, torch.Generator().manual_seed(s))[0][0] for s in range(SEEDS)])
    standard_error = torch.sqrt((f.var(0) + e.var(0)) / SEEDS)
    spread_off = abs(float(f.std(0).norm() / e.std(0).norm()) - 1)
    mean_off = float((f.mean(0) - e.mean(0)).norm() / standard_error.norm())
    assert mean_off > 1.5 or spread_off > SPREAD


# ------------------------------------------------------------------ the switch


def test_one_setting_switches_every_simulation() -> None:
    for name, preset in NUMERICS.items():
        model = DFCModule(MLP([4, 3, 2]), numerics=name)
        plain = DFC(MLP([4, 3, 2]), numerics=name)
        for cfg in (model.dfc_dynamics, model.dfc_feedback_config.simulation, plain.dynamics,
                    plain.feedback.simulation):
            assert (cfg.dtype, cfg.noise, cfg.early_stop, cfg.tolerance, cfg.outer_every) == (
                preset.dtype, preset.noise, preset.early_stop, preset.tolerance, preset.outer_every)
    assert DFCModule(MLP([4, 3, 2])).dfc_numerics is FAST  # the default
    from lightning.pytorch import LightningModule

    from lightning_dfc import DFCMixin

    class Host(DFCMixin, LightningModule):
        pass

    hosted = Host(dfc_network=MLP([4, 3, 2]), dfc_numerics="exact")
    assert hosted.dfc_numerics is EXACT and hosted.dfc_dynamics.dtype == "float64"
    # a lever set by hand wins over the preset
    model = DFCModule(MLP([4, 3, 2]), numerics="exact", dynamics={"outer_every": 5})
    assert model.dfc_dynamics.outer_every == 5 and model.dfc_dynamics.dtype == "float64"
    assert EXACT.overridden(model.dfc_dynamics) == {"outer_every": 5}
    assert resolve_numerics({"name": "mine", **{k: getattr(FAST, k) for k in ("dtype", "noise", "early_stop",
                                                                               "tolerance", "check_every",
                                                                               "outer_every")}}).name == "mine"
    with pytest.raises(ValueError, match="unknown numerics 'quick'"):
        DFCModule(MLP([4, 3, 2]), numerics="quick")


def test_the_cli_switch(tmp_path, cli_isolation) -> None:
    from lightning_dfc.shell.cli import build_cli

    config = Path(__file__).resolve().parents[2] / "examples" / "mnist_dfc.yaml"
    cli = build_cli(["--config", str(config), "--trainer.logger=false"], run=False)
    assert cli.model.dfc_numerics is FAST
    cli = build_cli(["--config", str(config), "--trainer.logger=false", "--model.init_args.numerics=exact"], run=False)
    assert cli.model.dfc_numerics is EXACT and cli.model.dfc_dynamics.early_stop is False


# ------------------------------------------------------------------ noisy float32: plain rate deviations

@pytest.mark.parametrize("name", ["tanh", "relu", "leaky_relu", "sigmoid", "linear"])
def test_direct_rate_deviation_is_the_identity_to_float32_rounding(name: str) -> None:
    """Noisy float32 simulations form phi(v + dv) - phi(v) as a plain difference: at the noise's
    scale (here |dv| ~ sigma = 2.8e-5, the smallest published level) it equals the float64 value to
    float32's rounding of the rates (a few 1e-8 absolute; tanh, which goes through the sigmoid,
    up to about 2.4e-7), as the cancellation-free identity does to its own precision. Each
    reference pair is served its own cached 2 v_ref and 1 + r_ref."""
    from lightning_dfc.core.activations import Activation, DirectDeviation
    from lightning_dfc.core.config import SimulationConfig
    from lightning_dfc.core.dynamics import feedforward
    from lightning_dfc.core.state import DeviationState

    generator = torch.Generator().manual_seed(0)
    v = torch.randn(64, 256, generator=generator, dtype=torch.float64)
    dv = 2.8e-5 * torch.randn(64, 256, generator=generator, dtype=torch.float64)
    act = Activation(name)
    truth = act(v + dv) - act(v)
    v32, dv32 = v.float(), dv.float()
    direct = DirectDeviation(act).rate_deviation(v32, act(v32), dv32)
    assert direct.dtype == torch.float32
    assert float((direct.double() - truth).abs().max()) < 3e-7
    if name != "linear":
        assert float((direct.double() - truth).abs().mean()) < 1e-7  # vs |dr| ~ 2e-5
    shared = DirectDeviation(act)
    for scale in (1.0, 0.5, 1.0):  # two references through one object, the first one twice
        v_ref = (scale * v).float()
        got = shared.rate_deviation(v_ref, act(v_ref), dv32)
        assert float((got.double() - (act(scale * v + dv) - act(scale * v))).abs().max()) < 3e-7
    # a noisy float32 deviation state uses it, a noise-free one the identity
    net = MLP([4, 3, 2], activation=name if name != "linear" else "tanh")
    params = DFCModule(net, variant="dfc").dfc_net.params()
    ff = feedforward(params, torch.randn(2, 4))
    noisy = DeviationState(params, ff, SimulationConfig(sigma=0.01), "nonlinear_difference")
    quiet = DeviationState(params, ff, SimulationConfig(sigma=0.0), "nonlinear_difference")
    assert all(isinstance(a, DirectDeviation) for a in noisy.activations)
    assert not any(isinstance(a, DirectDeviation) for a in quiet.activations)
