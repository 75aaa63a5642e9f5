"""pcomp.report helpers the experiment scripts rely on."""

import pytest

import pcomp.train.trainer as trainer
from pcomp.report import train_to_end


@pytest.mark.parametrize("signal_name,code", [("SIGTERM", 0), ("SIGINT", 130)])
def test_a_run_stopped_by_a_signal_ends_the_script(monkeypatch, signal_name, code):
    # the trainer checkpointed and returned early: a script must not go on to score and record the run
    monkeypatch.setattr(trainer, "train", lambda cfg: {"interrupted": signal_name, "stopped_at": 7, "stages": []})
    with pytest.raises(SystemExit) as e:
        train_to_end(object())
    assert e.value.code == code


def test_a_finished_run_returns_its_summary(monkeypatch):
    summary = {"stages": [{"steps": 3}], "eval": {}}
    monkeypatch.setattr(trainer, "train", lambda cfg: summary)
    assert train_to_end(object()) is summary
