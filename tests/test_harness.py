"""experiments/harness.py: what the experiment scripts rely on."""

import pytest
from hypothesis import given, strategies as st

import pcomp.train.trainer as trainer
from experiments.harness import interleaved_times, measure, spread_labels, train_m1, train_to_end, write_section
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


def test_train_m1_trains_a_bos_first_byte_model_once(monkeypatch, tmp_path):
    # the experiments' one M1 trainer: the overrides apply, except what the coder needs (bytes, BOS first)
    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or TrainResult("w", {"stages": [], "eval": {}}))
    run = tmp_path / "m1"
    assert train_m1(run, "model=test-tiny", "training.steps=7", "data.bos_first=false", "data.tokenizer=sentencepiece") == run
    (cfg,) = seen
    assert (cfg.model.name, cfg.training.steps, cfg.training.workdir) == ("test-tiny", 7, str(run))
    assert (cfg.data.tokenizer, cfg.data.bos_first) == ("bytes", True)
    run.mkdir()
    (run / "summary.json").write_text("{}")  # finished: reused, not trained again
    assert train_m1(run, "model=test-tiny") == run and len(seen) == 1


def test_write_section_replaces_only_its_marked_text(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\nkept\n<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    assert write_section(path, "a", "new a $1 \\1\nline 2")  # (patch_scaling and compressed_text write theirs)
    assert path.read_text() == ("# R\n\n<!-- a:begin -->\nnew a $1 \\1\nline 2\n<!-- a:end -->\n\nkept\n"
                                "<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    before = path.read_text()
    assert not write_section(path, "c", "x", append=False) and path.read_text() == before  # no markers: untouched
    assert write_section(path, "c", "x\\1 $ \\g<0>")  # appended; the text is not a regex template
    assert path.read_text() == before + "\n<!-- c:begin -->\nx\\1 $ \\g<0>\n<!-- c:end -->\n"


def test_interleaved_times_warm_up_then_rotate_the_order_every_round():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "off": None, "c": lambda: calls.append("c")}
    synced = []
    times = interleaved_times(runs, steps=2, repeats=3, warmup=1, sync=lambda n: synced.append(n))
    # warm-up once each; then rounds a b c / b c a / c a b, two calls per name per round
    assert calls == ["a", "b", "c"] + ["a", "a", "b", "b", "c", "c"] + ["b", "b", "c", "c", "a", "a"] + [
        "c", "c", "a", "a", "b", "b"]
    assert synced == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # after each warm-up and round
    assert set(times) == {"a", "b", "c"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    assert set(measure(runs, steps=1, repeats=3)) == {"a", "b", "c"}


@given(st.lists(st.floats(0, 1), max_size=20), st.floats(0.01, 0.2))
def test_spread_labels_keeps_order_and_gap_and_moves_only_crowded_labels(ys, gap):
    out = spread_labels(ys, gap)
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [out[i] for i in order]
    assert all(b - a >= gap * (1 - 1e-9) for a, b in zip(placed, placed[1:]))  # stacked in the points' order
    for i, y in enumerate(ys):  # a label with no neighbour within its run's reach stays on its point
        if all(abs(y - z) >= gap * len(ys) for j, z in enumerate(ys) if j != i):
            assert out[i] == y
    # a crowded run is centred on its points: the mean label height is the mean point height
    assert abs(sum(out) - sum(ys)) <= 1e-6 * max(1, len(ys))
