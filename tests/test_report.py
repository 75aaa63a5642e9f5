"""pcomp.report helpers the experiment scripts rely on."""

import pytest

import pcomp.train.trainer as trainer
from pcomp.report import train_to_end
from pcomp.train.trainer import TrainResult


@pytest.mark.parametrize("signal_name,code", [("SIGTERM", 0), ("SIGINT", 130)])
def test_a_run_stopped_by_a_signal_ends_the_script(monkeypatch, signal_name, code):
    # the trainer checkpointed and returned early: a script must not go on to score and record the run
    stopped = TrainResult("w", {"stages": [], "eval": None}, stopped_at=7, interrupted=signal_name)
    monkeypatch.setattr(trainer, "train", lambda cfg: stopped)
    with pytest.raises(SystemExit) as e:
        train_to_end(object())
    assert e.value.code == code


def test_a_finished_run_returns_its_summary(monkeypatch):
    result = TrainResult("w", {"stages": [{"steps": 3}], "eval": {}})
    monkeypatch.setattr(trainer, "train", lambda cfg: result)
    assert train_to_end(object()) is result


def test_a_run_stopped_at_a_step_is_not_finished(monkeypatch):
    # stop_at (as a preemption would) is no signal, but the run is not finished either: exit 0, never scored
    monkeypatch.setattr(trainer, "train", lambda cfg: TrainResult("w", {"stages": [], "eval": None}, stopped_at=3))
    with pytest.raises(SystemExit) as e:
        train_to_end(object())
    assert e.value.code == 0
