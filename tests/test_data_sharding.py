"""Per-process shards of the training data (two processes simulated by their indices): disjoint,
covering the split, each resuming exactly from a checkpointed iterator state; and a prepared
dataset read lazily record by record."""

import json

import numpy as np
import pytest

from pcomp.config import DataConfig
from pcomp.data import pipeline
from pcomp.data.prepared import PreparedDataset
from pcomp.data.run_data import RunData
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import DataError

BLOCK = 16


def _jsonl(tmp_path, n=41):
    rng = np.random.default_rng(0)
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"doc{i:03d} " + "xyz"[i % 3] * int(rng.integers(5, 60))}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _load(source, tmp_path, p, n, **dc):
    cfg = DataConfig(source=source, seq_len=BLOCK, tokenizer="bytes", eval_fraction=0.1, read_threads=1, **dc)
    return RunData.load(cfg, saved_tokenizer=tmp_path / "no-tokenizer", global_batch=4, block_tokens=BLOCK,
                        process_index=p, process_count=n)


def _docs_in(tokens: np.ndarray) -> list[bytes]:
    """The documents of a byte-tokenizer stream [BOS] doc [EOS] ... (naive parse)."""
    tok = ByteTokenizer()
    docs, cur = [], None
    for t in tokens.tolist():
        if t == tok.bos_id:
            cur = []
        elif t == tok.eos_id:
            docs.append(bytes(cur))
            cur = None
        else:
            cur.append(t)
    return docs


def _rows(it, n_rows):
    rows = []
    while len(rows) < n_rows:
        rows.extend(np.asarray(next(it)["tokens"]))
    return rows[:n_rows]


def test_local_shards_are_disjoint_and_cover_the_split(tmp_path):
    source = _jsonl(tmp_path)
    train = list(load_documents(source, "train", eval_fraction=0.1))
    shards = [_load(source, tmp_path, p, 2) for p in (0, 1)]
    got = [_docs_in(np.asarray(rd.tokens)) for rd in shards]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(train)
    for rd in shards:
        assert rd.local_batch == 2
        assert np.array_equal(rd.eval_set.tokens, shards[0].eval_set.tokens)  # the same held-out set
    # one epoch of a shard reads each of its blocks once
    for rd in shards:
        tokens = np.asarray(rd.tokens)
        n_blocks = len(tokens) // BLOCK
        rows = _rows(rd.batches(BLOCK, 0), n_blocks)
        assert all(r.shape == (BLOCK,) for r in rows)
        want = sorted(tuple(tokens[b * BLOCK:(b + 1) * BLOCK]) for b in range(n_blocks))
        assert sorted(tuple(r) for r in rows) == want


def test_single_process_order_is_unchanged(tmp_path):
    """One process: the unsharded stream and the one-process iterator of today."""
    source = _jsonl(tmp_path)
    rd = _load(source, tmp_path, 0, 1)
    stream = pipeline.token_stream(load_documents(source, "train", eval_fraction=0.1), ByteTokenizer())
    np.testing.assert_array_equal(rd.tokens, stream)
    ref = pipeline.in_memory_iterator(stream, seq_tokens=BLOCK // 2, block_tokens=BLOCK, global_batch=4, seed=0,
                                      start_block=3, threads=1)
    it = rd.batches(BLOCK // 2, 3)
    for _ in range(9):
        np.testing.assert_array_equal(next(it)["tokens"], next(ref)["tokens"])
    assert rd.next_start(BLOCK // 2, 5, 3, -1) == 3 + 5 * 4 * (BLOCK // 2) // BLOCK


@pytest.mark.parametrize("p", [0, 1])
def test_shard_resumes_exactly(tmp_path, p):
    rd = _load(_jsonl(tmp_path), tmp_path, p, 2)
    it = rd.batches(BLOCK // 2, 1)
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it)["tokens"] for _ in range(12)]  # runs past the end of the shard's epoch
    resumed = _load(_jsonl(tmp_path), tmp_path, p, 2).batches(BLOCK // 2, 1)
    resumed.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(resumed)["tokens"], w)


def test_shard_resumes_through_orbax(tmp_path):
    import orbax.checkpoint as ocp
    import grain

    rd = _load(_jsonl(tmp_path), tmp_path, 1, 2)
    it = rd.batches(BLOCK, 0)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        want = [next(it)["tokens"] for _ in range(6)]
        fresh = rd.batches(BLOCK, 0)
        mngr.restore(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for w in want:
        np.testing.assert_array_equal(next(fresh)["tokens"], w)


def test_too_few_documents_for_the_processes(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single document " * 50)
    _load(str(path), tmp_path, 0, 1)
    with pytest.raises(DataError, match="fewer than the 2 processes"):
        _load(str(path), tmp_path, 1, 2)


# ---------------------------------------------------------------------------
# Prepared datasets

REC = 8


def _prepared(tmp_path, train_counts=(21, 16, 5, 30, 3), eval_counts=(9, 12, 7), eval_bytes=(40, 50, 30)):
    """A `pcomp prepare` layout written directly: shard i holds tokens counting up from a per-split base."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = tmp_path / "prepared"
    out.mkdir()
    (out / "dataset.json").write_text(json.dumps({"seq_len": REC, "vocab_size": 1000}))
    streams = {}
    for split, counts, base, nbytes in (("train", train_counts, 0, [3 * c for c in train_counts]),
                                        ("eval", eval_counts, 500, eval_bytes)):
        start = base
        streams[split] = []
        for shard, (count, b) in enumerate(zip(counts, nbytes)):
            stream = np.arange(start, start + count, dtype=np.uint16)
            start += count
            n_rec = -(-count // REC)
            padded = np.zeros(n_rec * REC, np.uint16)
            padded[:count] = stream
            w = ArrayRecordWriter(str(out / f"{split}-{shard:05d}.array_record"), "group_size:1")
            for rec in padded.reshape(n_rec, REC):
                w.write(rec.tobytes())
            w.close()
            (out / f"{split}-{shard:05d}.json").write_text(json.dumps({"tokens": count, "bytes": b, "records": n_rec}))
            streams[split].append(stream.astype(np.int32))
    return out, streams


def _naive_records(streams, p, n):
    """Records p::n of the split, each without padding (numpy reference)."""
    records = [s[i:i + REC] for s in streams for i in range(0, len(s), REC)]
    return records[p::n]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_record_tokens_match_a_naive_reading(tmp_path, n):
    out, streams = _prepared(tmp_path)
    ds = PreparedDataset(out)
    all_records = set()
    for p in range(n):
        view = ds.tokens("train", p, n)
        recs = _naive_records(streams["train"], p, n)
        want = np.concatenate(recs)
        assert len(view) == len(want)
        np.testing.assert_array_equal(view[0:len(view)], want)
        rng = np.random.default_rng(p)
        for _ in range(50):
            a = int(rng.integers(0, len(want) + 1))
            b = int(rng.integers(a, len(want) + 1))
            np.testing.assert_array_equal(view[a:b], want[a:b])
        for r in recs:
            assert not set(r.tolist()) & all_records  # disjoint
            all_records |= set(r.tolist())
    assert all_records == set(np.concatenate(streams["train"]).tolist())  # together: the split
    if n == 1:
        np.testing.assert_array_equal(ds.tokens("train")[0:len(view)], ds.stream("train")[0])


def test_prepared_run_data_shards_and_resumes(tmp_path):
    out, streams = _prepared(tmp_path)
    whole = np.concatenate(streams["train"])
    one = _load(str(out), tmp_path, 0, 1)
    np.testing.assert_array_equal(one.tokens[0:len(one.tokens)], whole)
    seen = []
    for p in (0, 1):
        rd = _load(str(out), tmp_path, p, 2)
        assert rd.tokenizer is None and rd.vocab_size == 1000
        tokens = rd.tokens[0:len(rd.tokens)]
        n_blocks = len(tokens) // BLOCK
        rows = _rows(rd.batches(BLOCK, 0), n_blocks)
        assert sorted(tuple(r) for r in rows) == sorted(tuple(tokens[b * BLOCK:(b + 1) * BLOCK])
                                                       for b in range(n_blocks))
        seen.append(set(tokens.tolist()))
        it = rd.batches(BLOCK // 2, 0)
        next(it), next(it)
        state = it.get_state()
        want = [next(it)["tokens"] for _ in range(5)]
        again = _load(str(out), tmp_path, p, 2).batches(BLOCK // 2, 0)
        again.set_state(state)
        for w in want:
            np.testing.assert_array_equal(next(again)["tokens"], w)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(whole.tolist())


def test_prepared_eval_is_bounded_by_whole_shards(tmp_path):
    out, streams = _prepared(tmp_path)
    ds = PreparedDataset(out)
    tokens, n_bytes = ds.stream("eval", 95)  # 40 + 50 fit, + 30 would not
    np.testing.assert_array_equal(tokens, np.concatenate(streams["eval"][:2]))
    assert n_bytes == 90
    tokens, n_bytes = ds.stream("eval", 10)  # at least the first shard
    assert n_bytes == 40 and len(tokens) == 9
    assert ds.stream("eval")[1] == 120
    rd = _load(str(out), tmp_path, 0, 1, eval_max_bytes=95)
    assert rd.eval_set.n_bytes == 90 and rd.eval_set.n_targets == 9 + 12 - 1


def test_run_data_process_index_out_of_range(tmp_path):
    from pcomp.errors import ConfigError

    with pytest.raises(ConfigError, match="process index 2"):
        _load(_jsonl(tmp_path), tmp_path, 2, 2)
