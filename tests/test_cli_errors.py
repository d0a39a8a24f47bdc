"""A bad value anywhere in a config gives one short ``error:`` line naming the value and the fix,
and exit status 2, like a key typo (issue 13); the traceback only on request."""

from __future__ import annotations

import pytest

from lightning_dfc.cli import TRACEBACK_ENV, main

CONFIG = "examples/mnist_dfc.yaml"

ROWS = [  # (override, what the one line must say)
    ("--model.init_args.dynamics.dt=0.5", "dt=0.5 is larger than the somatic time constant tau_v=0.2"),
    ("--model.init_args.variant=dfc_nope", "unknown variant 'dfc_nope'; choose one of"),
    ("--model.init_args.loss=hinge", "unknown loss 'hinge'"),
    ("--model.init_args.dynamics.steps=1", "steps must be an integer >= 2"),
    ("--model.init_args.dynamics.sigma=-1", "sigma must be >= 0, got -1.0"),
    ("--model.init_args.target_stepsize=0", "target_stepsize (lambda) must be a finite positive number"),
    ("--model.init_args.network.init_args.output_activation=tanh", "the network's output layer must be linear"),
    ("--data.batch_size=0", "must be a positive integer, got 0"),
    ("--model.init_args.updates.max_skipped_fraction=2", "max_skipped_fraction must lie in (0, 1]"),
]


@pytest.mark.parametrize("override, said", ROWS, ids=[r[0].split("=")[0].rsplit(".", 1)[-1] for r in ROWS])
def test_a_bad_value_is_one_error_line(override, said, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", CONFIG, override, "--data.data_dir=/nonexistent", "--trainer.logger=false"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("lightning-dfc: error: ") and said in lines[0], err
    assert len(lines) == 2 and TRACEBACK_ENV in lines[1], err  # no traceback, no Namespace dump
    assert "Traceback" not in err and "Namespace(" not in err


def test_the_traceback_on_request(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="tau_v"):
        main(["fit", "--config", CONFIG, "--model.init_args.dynamics.dt=0.5", "--data.data_dir=/nonexistent",
              "--trainer.logger=false"])
