"""Pure helpers of experiments/patch_scaling.py and its corpus (experiments/unique_corpus.py): the
corpus split, the overfitting flag and the resumable plan (which runs a rerun trains). No training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from experiments import patch_scaling as ps
from experiments import unique_corpus
from experiments.harness import write_json
from pcomp.data.sources import load_documents
from pcomp.errors import DataError

NAMES = st.text(alphabet="abcdefghij/._", min_size=1, max_size=12)
TEXTS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


def _naive_held_out(name: str, permille: int) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return sum(b << (8 * (7 - i)) for i, b in enumerate(digest[:8])) % 1000 < permille


@given(st.dictionaries(NAMES, TEXTS, min_size=1, max_size=30), st.integers(0, 1000))
def test_corpus_split_is_a_deterministic_partition_of_whole_documents(docs, permille):
    items = sorted(docs.items())
    train, held = unique_corpus.corpus_split(items, permille)
    assert train == [d for d in items if not _naive_held_out(d[0], permille)]
    assert held == sorted((d for d in items if _naive_held_out(d[0], permille)),
                          key=lambda d: hashlib.sha256(d[0].encode()).digest()[:8])
    assert unique_corpus.corpus_split(list(reversed(items)), permille) == (list(reversed(train)), held)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(NAMES, TEXTS.map(lambda t: t if t.endswith("\n") else t + "\n"), min_size=2, max_size=25))
def test_written_corpus_splits_exactly_at_the_document_boundary(docs):
    items = sorted(docs.items())
    train, held = unique_corpus.corpus_split(items, 300)
    if not train or not held:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.jsonl"
        meta = unique_corpus.write_corpus(items, path, permille=300)
        got_train = load_documents(str(path), "train", eval_fraction=meta["eval_fraction"])
        got_held = load_documents(str(path), "eval", eval_fraction=meta["eval_fraction"])
        assert list(got_train) == [t.encode() for _, t in train]
        assert list(got_held) == [t.encode() for _, t in held]
        assert (meta["train_docs"], meta["eval_docs"]) == (len(train), len(held))
        assert json.loads(path.with_suffix(".meta.json").read_text())["sha256"] == hashlib.sha256(
            path.read_bytes()).hexdigest()


def test_read_doc_tree_names_the_install_command_when_packages_are_missing(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y linux-doc-6.1 python3.11-doc"):
        unique_corpus.read_doc_tree((("linux-doc-6.1", str(tmp_path / "absent")),))


def test_read_doc_tree_reads_txt_files_sorted_and_newline_terminated(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.rst.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "skip.html").write_text("not text source")
    (tmp_path / "blank.txt").write_text("  \n")
    docs = unique_corpus.read_doc_tree((("pkg", str(tmp_path)),))
    assert docs == [("pkg/a.txt", "first\n"), ("pkg/b/x.rst.txt", "second\n")]


# --- overfitting flag --------------------------------------------------------------------------
def _naive_rises(curve, start, end, tol):
    """Reference: evals in (2/3 mark, end], plus the last eval at or before the mark."""
    mark = start + 2 * (end - start) / 3
    inside = [v for s, v in curve if mark < s <= end]
    before = [v for s, v in curve if start < s <= mark]
    window = before[-1:] + inside
    return len(window) >= 2 and window[-1] - min(window) > tol


@pytest.mark.parametrize("curve, expected", [
    ([(10, 3.0), (20, 2.8), (30, 2.7), (40, 2.65), (50, 2.6), (60, 2.58)], False),  # still falling
    ([(10, 3.0), (20, 2.8), (30, 2.7), (40, 2.6), (50, 2.62), (60, 2.64)], True),  # bottom at 40, then up
    ([(10, 3.0), (20, 2.5), (30, 2.9), (40, 2.8), (50, 2.7), (60, 2.6)], False),  # rose only before the window
    ([(10, 3.0), (20, 2.8), (30, 2.7), (40, 2.6), (50, 2.601), (60, 2.603)], False),  # within tolerance
    ([(60, 2.6)], False),  # one point: no trend
])
def test_rises_late_cases(curve, expected):
    assert ps.rises_late(curve, 0, 60) is expected
    assert _naive_rises(curve, 0, 60, 0.005) is expected


@given(st.lists(st.floats(1.0, 5.0), min_size=1, max_size=20), st.integers(0, 50))
def test_rises_late_matches_reference_and_ignores_the_earlier_stage(values, start):
    step = 7
    curve = [(start + step * (i + 1), v) for i, v in enumerate(values)]
    end = curve[-1][0]
    stage1 = [(s, 9.0) for s in range(1, start + 1, 5)]  # a previous stage's evals never count
    assert ps.rises_late(stage1 + curve, start, end) == _naive_rises(curve, start, end, 0.005)


# --- the plan and what a rerun skips ------------------------------------------------------------
TOKENS = {"unique": 33_000_000, "epochs": 900_000}


def _done(runs, bpb):
    return {r.name: {"bpb": bpb(r)} for r in runs}


def test_lr_candidates_come_first_and_the_best_one_is_used():
    # the two-size study without per-model entries (test_per_model_points_... covers those)
    preset = {**ps.PRESETS["cpu"], "models": ("ps-100k", "ps-500k"), "model_dns": {}, "model_series": {},
              "model_lrs": {}}
    plan0 = ps.pending_runs(preset, {}, TOKENS)
    small, large = preset["models"]
    lr_runs = [ps.arm_run(small, "unique", 10, "a", lr) for lr in preset["lrs"]]
    assert [r.name for r in plan0[:3]] == [r.name for r in lr_runs]
    assert all(r.purpose == "lr" for r in plan0)  # nothing else until an lr is chosen
    done = _done(lr_runs, lambda r: {1e-3: 2.2, 3e-3: 2.1, 1e-2: 2.3}[r.lr])
    assert ps.chosen_lr(small, preset, done) == 3e-3
    rest = ps.pending_runs(preset, done, TOKENS)
    assert not {r.name for r in rest} & set(done)  # finished runs are skipped
    main = [r for r in rest if r.model == small and r.purpose == "main"]
    # (a, b, c) at increasing D/N, unique series first, all at the chosen lr; (a) at D/N 10 already ran
    assert [(r.series, r.dn, r.arm) for r in main[:5]] == [("unique", 10, "b"), ("unique", 10, "c"),
                                                           ("unique", 30, "a"), ("unique", 30, "b"),
                                                           ("unique", 30, "c")]
    assert {r.lr for r in main} == {3e-3}
    series = [r.series for r in main]
    assert series == sorted(series, key=lambda s: s != "unique")  # the unique series before the epochs one
    # the next model's lr runs follow the first model's series
    first_large = next(i for i, r in enumerate(rest) if r.model == large)
    assert all(r.model == small for r in rest[:first_large]) and rest[first_large].purpose == "lr"
    assert list(dict.fromkeys((r.series, r.dn) for r in main)) == [
        ("unique", 10), ("unique", 30), ("unique", 100), ("unique", 300), ("epochs", 10), ("epochs", 30),
        ("epochs", 100), ("epochs", 300), ("epochs", 1000)]  # unique D/N = 1000 is beyond the corpus
    # with the large model's lr chosen too, its main series stops at its cap; the rest runs last
    large_lr = [ps.arm_run(large, "unique", 10, "a", lr) for lr in preset["lrs"]]
    rest = ps.pending_runs(preset, {**done, **_done(large_lr, lambda r: 3.0 - r.lr)}, TOKENS)
    large_main = [(r.series, r.dn) for r in rest if r.model == large and r.purpose == "main"]
    cap = preset["main_dn_cap"][large]
    assert [p for p in large_main if p[1] <= cap] == [("unique", 10)] * 2 + [("unique", 30)] * 3 + [
        ("epochs", 10)] * 3 + [("epochs", 30)] * 3
    late = large_main[len(large_main) - 3 * sum(d > cap for d in preset["dns"] + preset["late_dns"]):]
    assert [d for _, d in late[::3]] == [d for d in preset["dns"] + preset["late_dns"] if d > cap]
    assert rest.index(next(r for r in rest if r.model == large and r.dn > cap)) > max(
        i for i, r in enumerate(rest) if r.model == large and r.dn <= cap)


def test_per_model_points_series_and_lr_candidates():
    """ps-30k (issue #24): unique data only, D/N up to 1000, five lr candidates; the side study stays on
    ps-100k; every size has D/N 60 (about the largest ps-500k reaches on unique data), so the gap is
    compared across sizes there; `chosen_lrs` and the report follow the grown lr grid."""
    preset = ps.PRESETS["cpu"]
    assert preset["models"][0] == "ps-30k" and ps.n_params("ps-30k")[0] == 32_376
    lrs = ps.model_lrs(preset, "ps-30k")
    plan0 = ps.pending_runs(preset, {}, TOKENS)
    assert [(r.model, r.lr, r.purpose) for r in plan0[: len(lrs)]] == [("ps-30k", lr, "lr") for lr in lrs]
    small_lr = [ps.arm_run("ps-30k", "unique", 10, "a", lr) for lr in lrs]
    done = _done(small_lr, lambda r: abs(math.log10(r.lr) + 1.5))  # best: 3e-2, inside the grid
    assert ps.chosen_lr("ps-30k", preset, done) == 3e-2
    rest = ps.pending_runs(preset, done, TOKENS)
    small = [r for r in rest if r.model == "ps-30k" and r.purpose == "main"]
    assert {r.series for r in small} == {"unique"} and {r.lr for r in small} == {3e-2}
    assert list(dict.fromkeys(r.dn for r in small)) == [10, 30, 60, 100, 300, 1000]  # 1000 fits: 32.4M <= 33M
    big_lr = [ps.arm_run(m, "unique", 10, "a", lr) for m in ("ps-100k", "ps-500k") for lr in preset["lrs"]]
    done = {**done, **_done(big_lr, lambda r: 3.0 - r.lr)}
    points = [ps.arm_run("ps-100k", "unique", dn, arm, 1e-2) for dn in (10, 30) for arm in "abc"]
    done.update(_done(points, lambda r: 2.0 + 0.1 * (r.arm == "b") * (r.dn == 10)))
    rest = ps.pending_runs(preset, done, TOKENS)
    assert {r.model for r in rest if r.purpose == "side"} == {"ps-100k"}
    for model in ("ps-100k", "ps-500k"):
        assert ("unique", 60) in {(r.series, r.dn) for r in rest if r.model == model}
    # a point left at an lr that a grown grid no longer picks is not reported beside the chosen one
    # (arm (a) of a point is its lr candidate run: the same run, so the same name)
    old_point = [ps.arm_run("ps-30k", "unique", 10, arm, 1e-2) for arm in "bc"]
    new_point = [ps.arm_run("ps-30k", "unique", 10, arm, 3e-2) for arm in "bc"]
    small_lr = [dataclasses.replace(r, purpose="lr") for r in small_lr]
    report = {r.name: {"run": dataclasses.asdict(r), "bpb": bpb, "N": 32_376, "D": 323_760, "epochs": 0.01,
                       "train_loss_bits_per_token": 3.0, "curve": [], "stage_steps": [10]}
              for runs, bpbs in ((small_lr, [4.0, 3.9, 3.8, 3.7, 3.75]), (old_point, [3.9, 3.85]),
                                 (new_point, [3.65, 3.75]))
              for r, bpb in zip(runs, bpbs)}
    assert ps.chosen_lrs(report) == {"ps-30k": 3e-2}
    rows = ps.point_rows(report)
    assert [(r["lr"], round(r["b_a"], 3)) for r in rows] == [(3e-2, -0.05)]
    assert ps.crossing_dn(rows, "ps-30k") == 10


def test_unique_points_beyond_the_corpus_are_not_planned():
    n = ps.n_params("ps-100k")[0]
    assert ps.reachable(300, n, "unique", 33_000_000, 128)
    assert not ps.reachable(1000, n, "unique", 33_000_000, 128)
    assert ps.reachable(1000, n, "epochs", 900_000, 128)
    n_large = ps.n_params("ps-500k")[0]
    assert ps.reachable(30, n_large, "unique", 33_000_000, 128) and not ps.reachable(100, n_large, "unique",
                                                                                      33_000_000, 128)


@pytest.mark.parametrize("b, expected", [(2.58, "ba"), (2.571, "ba"), (2.63, "bca"), (2.66, "bc"), (2.40, ""),
                                         (2.70, ""), (2.5, "")])
def test_three_seeds_only_where_patch_is_close(b, expected):
    """(b) and the arms within 0.03 bits/byte of it get seeds 1 and 2; an arm far from (b) gets none."""
    bpb = {"a": 2.60, "b": b, "c": 2.65}
    assert ps.close_arms(bpb) == expected
    preset = {**ps.PRESETS["cpu"], "models": ("ps-100k",), "series": ("unique",), "dns": (10,), "late_dns": ()}
    lr_runs = [ps.arm_run("ps-100k", "unique", 10, "a", lr) for lr in preset["lrs"]]
    done = _done(lr_runs, lambda r: 2.60 if r.lr == 3e-3 else 2.9)
    done.update({ps.arm_run("ps-100k", "unique", 10, arm, 3e-3).name: {"bpb": v}
                 for arm, v in (("b", b), ("c", 2.65))})
    rest = ps.pending_runs(preset, done, TOKENS)
    seeds = [r for r in rest if r.purpose == "seed"]
    assert [(r.arm, r.seed) for r in seeds] == [(a, s) for a in expected for s in (1, 2)]
    side = [r for r in rest if r.purpose == "side"]  # the side study sits at the best (only) D/N
    assert {(r.K, round(r.lam, 3), r.warmup_fraction) for r in side} == {
        (2, 0.667, 0.04), (8, 0.667, 0.04), (4, 0.5, 0.04), (4, 0.8, 0.04), (4, 0.667, 0.0), (4, 0.667, 0.1)}
    assert all(r.dn == 10 and r.share == 1.0 for r in side)


def test_finished_reads_the_committed_jsons(tmp_path):
    run = ps.arm_run("ps-100k", "unique", 10, "a", 1e-3)
    write_json(tmp_path / "runs" / f"{run.name}.json", {"name": run.name, "bpb": 2.5})
    done = ps.finished(tmp_path)
    assert list(done) == [run.name] and done[run.name]["bpb"] == 2.5
    assert run.name not in {r.name for r in ps.pending_runs(ps.PRESETS["cpu"], done, TOKENS)}
    assert ps.finished(tmp_path / "nothing") == {}


def test_run_overrides_make_a_valid_config_with_the_planned_budget(tmp_path):
    from pcomp.config import Config

    run = ps.arm_run("ps-100k", "epochs", 30, "b", 3e-3, seed=2)
    ov = ps.run_overrides(run, ps.PRESETS["cpu"], "embedded", None, tmp_path / run.name)
    cfg = Config.load(run.model).override(*ov).validate()
    n = ps.n_params("ps-100k")[0]
    assert cfg.training.tokens == 30 * n and cfg.training.patch_size == 4
    assert cfg.training.patch_fraction == pytest.approx(2 / 3) and cfg.training.seed == cfg.data.seed == 2
    assert cfg.training.warmup_fraction == ps.WARMUP_FRACTION
    assert n == 92_400 and ps.n_params("ps-100k")[1] == 55_536


@pytest.mark.parametrize("purposes", ["", "main,seeds", "lr, x"])
def test_unknown_purposes_are_refused_before_any_work(purposes, capsys):
    with pytest.raises(SystemExit) as exc:
        ps.main(["--purposes", purposes, "--out", "/nonexistent/never-written"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--purposes {purposes!r}" in err and "lr, main, seed, side" in err


def test_a_run_with_the_same_training_as_a_finished_one_reuses_its_result():
    """(c) at D/N 60 is token level on 30 N tokens: the same training as (a) at D/N 30 (same overrides),
    so its result is copied with its own name and D; (b) at D/N 60 is a different training."""
    preset = ps.PRESETS["cpu"]
    over = lambda r: ps.run_overrides(r, preset, "corpus.jsonl", 0.05, Path("w") / r.name)  # noqa: E731
    a30 = ps.arm_run("ps-100k", "unique", 30, "a", 3e-3)
    done = {a30.name: {"name": a30.name, "overrides": [o for o in over(a30) if not o.startswith("training.workdir")],
                       "D": 30 * 92_400, "bpb": 2.425, "tokens": 2_772_992}}
    c60, b60 = (ps.arm_run("ps-100k", "unique", 60, arm, 3e-3) for arm in "cb")
    got = ps.same_training(c60, over(c60), done, 92_400)
    assert got["name"] == c60.name and got["run"]["arm"] == "c" and got["run"]["dn"] == 60
    assert (got["D"], got["bpb"], got["tokens"], got["same_run_as"]) == (60 * 92_400, 2.425, 2_772_992, a30.name)
    assert ps.same_training(b60, over(b60), done, 92_400) is None
    assert ps.same_training(a30, over(a30), done, 92_400) is None  # a run is not its own twin
