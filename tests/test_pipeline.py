"""Data pipeline: token streams, the in-memory block packer (shuffling, epochs, processes, stages,
state), the exact held-out evaluation windows, and the streaming packer."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcomp.data.pipeline import (
    document_tokens,
    eval_set,
    in_memory_iterator,
    streaming_iterator,
    token_stream,
)
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import DataError

BOS, EOS = 256, 257


def manual_stream(docs, specials=True) -> list[int]:
    out = []
    for d in docs:
        out += ([BOS] if specials else []) + list(d) + ([EOS] if specials else [])
    return out


# --- token streams ------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=6))
def test_document_tokens_and_stream_match_manual(docs):
    tok = ByteTokenizer()
    for d in docs:
        got = document_tokens(tok, d)
        assert got.dtype == np.int32
        assert got.tolist() == [BOS] + list(d) + [EOS]
    stream = token_stream(docs, tok)
    assert stream.dtype == np.int32 and stream.ndim == 1
    assert stream.tolist() == manual_stream(docs)
    assert token_stream(docs, ByteTokenizer(specials=False)).tolist() == manual_stream(docs, specials=False)


# --- in-memory packer ---------------------------------------------------------------------------------
def _take(it, n):
    """n batches of token ids (the streaming iterator also yields each token's document position)."""
    out = []
    for _ in range(n):
        batch = next(it)
        out.append(np.asarray(batch["tokens"] if isinstance(batch, dict) else batch))
    return out


def _offsets(batch: np.ndarray, seq: int) -> list[int]:
    """Offsets in an np.arange stream of each row, checking each row is one contiguous slice."""
    assert batch.shape[1] == seq
    offs = []
    for row in batch:
        assert row.tolist() == list(range(int(row[0]), int(row[0]) + seq)), row
        offs.append(int(row[0]))
    return offs


def _iter(tokens, **kw):
    kw = {"seq_tokens": 8, "block_tokens": 8, "global_batch": 4, "seed": 0, "threads": 1} | kw
    return in_memory_iterator(tokens, **kw)


def test_in_memory_deterministic_per_seed():
    tokens = np.arange(12 * 8 + 5, dtype=np.int32)
    a, b, c = _take(_iter(tokens, seed=3), 5), _take(_iter(tokens, seed=3), 5), _take(_iter(tokens, seed=4), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


@pytest.mark.parametrize("seq", [8, 4, 2])
def test_in_memory_epoch_covers_every_block_once(seq):
    block, n_blocks, batch = 8, 12, 4
    per_block = block // seq
    tokens = np.arange(n_blocks * block + 5, dtype=np.int32)  # 5 tail tokens: never used
    steps = n_blocks * per_block // batch  # one epoch
    epochs = []
    it = _iter(tokens, seq_tokens=seq, block_tokens=block, global_batch=batch, seed=1)
    for _ in range(2):
        offs = [o for b in _take(it, steps) for o in _offsets(b, seq)]
        assert all(o + seq <= n_blocks * block for o in offs)
        blocks = [o // block for o in offs]
        # each block once, its per_block sequences consecutive and in order
        for i in range(0, len(offs), per_block):
            assert [o - blocks[i] * block for o in offs[i : i + per_block]] == [k * seq for k in range(per_block)]
            assert len(set(blocks[i : i + per_block])) == 1
        order = blocks[::per_block]
        assert sorted(order) == list(range(n_blocks))
        epochs.append(order)
    assert epochs[0] != list(range(n_blocks))  # shuffled
    assert epochs[1] != epochs[0]  # reshuffled every epoch


@pytest.mark.parametrize("seq", [8, 4])
def test_in_memory_processes_split_the_global_batch(seq):
    tokens = np.arange(10 * 8 + 3, dtype=np.int32)
    kw = dict(seq_tokens=seq, block_tokens=8, global_batch=4, seed=2)
    whole = _take(_iter(tokens, **kw), 7)
    p0 = _take(_iter(tokens, process_index=0, process_count=2, **kw), 7)
    p1 = _take(_iter(tokens, process_index=1, process_count=2, **kw), 7)
    for w, a, b in zip(whole, p0, p1):
        assert a.shape == b.shape == (2, seq)
        np.testing.assert_array_equal(np.concatenate([a, b]), w)
    with pytest.raises(DataError):
        _iter(tokens, global_batch=4, process_count=3)


@pytest.mark.parametrize("k", [2, 4])
def test_in_memory_stage_two_continues_at_next_block(k):
    seq, batch, n_blocks, steps1 = 4, 2, 10, 3
    block = k * seq
    tokens = np.arange(n_blocks * block + 3, dtype=np.int32)
    # the order a single stage reading whole blocks would produce, past the end of the first epoch
    ref = _take(_iter(tokens, seq_tokens=block, block_tokens=block, global_batch=batch, seed=5), steps1 + 8)
    stage1 = _take(_iter(tokens, seq_tokens=block, block_tokens=block, global_batch=batch, seed=5), steps1)
    for a, b in zip(stage1, ref):
        np.testing.assert_array_equal(a, b)
    stage2 = _iter(tokens, seq_tokens=seq, block_tokens=block, global_batch=batch, seed=5,
                   start_block=steps1 * batch)
    n2 = 8 * batch * k // batch  # the next 8 * batch blocks, cut into k sequences each
    got = np.concatenate([b.reshape(-1) for b in _take(stage2, n2)])
    want = np.concatenate([b.reshape(-1) for b in ref[steps1:]])
    np.testing.assert_array_equal(got, want)


def test_in_memory_state_restores():
    tokens = np.arange(9 * 8, dtype=np.int32)
    kw = dict(seq_tokens=4, block_tokens=8, global_batch=2, seed=7)
    it = _iter(tokens, **kw)
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 6)
    fresh = _iter(tokens, **kw)
    assert not np.array_equal(np.asarray(next(_iter(tokens, **kw))), expected[0])  # restoring matters
    fresh.set_state(state)
    for a, b in zip(_take(fresh, 6), expected):
        np.testing.assert_array_equal(a, b)


def test_in_memory_errors():
    with pytest.raises(DataError):
        _iter(np.arange(100, dtype=np.int32), seq_tokens=3, block_tokens=8)
    with pytest.raises(DataError):
        _iter(np.arange(7, dtype=np.int32), seq_tokens=8, block_tokens=8)


# --- evaluation windows -------------------------------------------------------------------------------
def _windows_to_stream(es):
    """Rebuild the held-out stream from the windows, checking each row is a masked prefix, that rows
    chain (row i starts with the token before its first target) and that every row scores >= 1 target."""
    stream, targets = None, []
    for tok, msk in zip(es.tokens, es.mask):
        n = int(msk.sum())
        assert msk[:n].tolist() == [1] * n and not msk[n:].any() and not tok[n:].any()
        assert n >= 2
        if stream is None:
            stream = [int(tok[0])]
        assert int(tok[0]) == stream[-1]  # the context of the first target is the previous token
        stream += tok[1:n].tolist()
        targets += tok[1:n].tolist()
    return stream, targets


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=5),
    seq_len=st.sampled_from([2, 3, 5, 8]),
)
def test_eval_set_scores_every_token_once(texts, seq_len):
    docs = [t.encode("utf-8") for t in texts]
    es = eval_set(docs, ByteTokenizer(), seq_len)
    expected = manual_stream(docs)
    assert es.tokens.shape[1] == seq_len and es.tokens.dtype == np.int32
    stream, targets = _windows_to_stream(es)
    assert targets == expected[1:]  # every token but the first is a target exactly once, in order
    assert stream == expected
    assert es.n_targets == len(expected) - 1 == int(es.mask[:, 1:].sum())
    assert es.n_bytes == sum(len(d) for d in docs)


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=5),
    seq_len=st.sampled_from([2, 3, 5, 8]),
)
def test_bos_first_eval_windows_start_with_bos_and_score_every_token_once(texts, seq_len):
    """A model trained with BOS at position 0 is evaluated that way: window i = [BOS] + the next
    seq_len - 1 targets (a naive loop over the stream), the same targets as the default windows."""
    docs = [t.encode("utf-8") for t in texts]
    es = eval_set(docs, ByteTokenizer(), seq_len, bos_first=True)
    expected = manual_stream(docs)
    rows, targets = [], expected[1:]
    while targets:
        rows.append([BOS] + targets[: seq_len - 1])
        targets = targets[seq_len - 1 :]
    assert es.tokens.shape == (len(rows), seq_len)
    for tok, msk, row in zip(es.tokens, es.mask, rows):
        assert tok[: len(row)].tolist() == row and not tok[len(row) :].any()
        assert msk.tolist() == [1] * len(row) + [0] * (seq_len - len(row))
    assert es.n_targets == len(expected) - 1 == int(es.mask[:, 1:].sum())
    assert es.n_bytes == eval_set(docs, ByteTokenizer(), seq_len).n_bytes


def naive_budget(texts, max_bytes):
    """Whole documents while they fit, then the longest prefix of whole characters of the next one."""
    taken, used = [], 0
    for text in texts:
        data = text.encode("utf-8")
        if used + len(data) <= max_bytes:
            taken.append(data)
            used += len(data)
            continue
        prefix = b""
        for ch in text:
            if used + len(prefix) + len(ch.encode("utf-8")) > max_bytes:
                break
            prefix += ch.encode("utf-8")
        if prefix:
            taken.append(prefix)
        break
    return taken


@settings(max_examples=30, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="aé東😀 ", min_size=1, max_size=8), min_size=1, max_size=4),
    max_bytes=st.integers(1, 60),
)
def test_eval_set_max_bytes_cuts_on_character_boundaries(texts, max_bytes):
    docs = [t.encode("utf-8") for t in texts]
    expected_docs = naive_budget(texts, max_bytes)
    if not expected_docs:
        with pytest.raises(DataError):
            eval_set(docs, ByteTokenizer(), 5, max_bytes=max_bytes)
        return
    es = eval_set(docs, ByteTokenizer(), 5, max_bytes=max_bytes)
    stream, _ = _windows_to_stream(es)
    assert stream == manual_stream(expected_docs)
    assert es.n_bytes == sum(len(d) for d in expected_docs) <= max_bytes
    for d in expected_docs:
        d.decode("utf-8")  # never cut inside a multi-byte sequence
    if sum(len(d) for d in docs) > max_bytes:
        assert es.n_bytes > max_bytes - 4  # at most one partial character (<= 3 bytes) is dropped


@pytest.mark.parametrize("global_batch", [1, 3, 4, 50])
def test_eval_batches_pad_to_global_batch(global_batch):
    docs = [b"hello world", "caf\u00e9 \u6771\u4eac".encode(), b"x" * 23]
    es = eval_set(docs, ByteTokenizer(), 6)
    n = len(es.tokens)
    batches = list(es.batches(global_batch))
    assert len(batches) == -(-n // global_batch)
    for b in batches:
        assert b["tokens"].shape == b["mask"].shape == (global_batch, 6)
    tokens = np.concatenate([b["tokens"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(tokens[:n], es.tokens)
    np.testing.assert_array_equal(mask[:n], es.mask)
    assert not tokens[n:].any() and not mask[n:].any()


def test_eval_set_empty_raises():
    with pytest.raises(DataError):
        eval_set([], ByteTokenizer(), 8)


# --- streaming packer ---------------------------------------------------------------------------------
def _distinct_docs(n=12, max_len=19):
    """Doc i holds bytes 20 i .. 20 i + len - 1: the content identifies the document."""
    rng = np.random.default_rng(0)
    return [bytes(range(20 * i, 20 * i + int(rng.integers(1, max_len + 1)))) for i in range(n)]


def _parse_docs(flat, docs):
    """Split a concatenated token list into whole documents; returns (doc ids in order, tokens left)."""
    ids, i = [], 0
    while i < len(flat):
        if flat[i] != BOS:
            raise AssertionError(f"expected BOS at {i}, got {flat[i]}")
        try:
            end = flat.index(EOS, i)
        except ValueError:
            break  # a partial document at the end
        content = flat[i + 1 : end]
        doc = content[0] // 20 if content else None
        assert doc is not None and content == list(docs[doc]), (i, content)
        ids.append(doc)
        i = end + 1
    return ids, flat[i:]


def _stream_iter(docs, **kw):
    kw = {"seq_tokens": 8, "global_batch": 2, "seed": 0, "threads": 1} | kw
    return streaming_iterator(docs, ByteTokenizer(), **kw)


def test_streaming_deterministic_and_shaped():
    docs = _distinct_docs()
    a, b = _take(_stream_iter(docs, seed=1), 10), _take(_stream_iter(docs, seed=1), 10)
    c = _take(_stream_iter(docs, seed=2), 10)
    for x, y in zip(a, b):
        assert x.shape == (2, 8)
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
    with pytest.raises(DataError):
        _stream_iter([])


@pytest.mark.parametrize("seq", [8, 5])
def test_streaming_first_epoch_is_a_permutation_of_documents(seq):
    docs = _distinct_docs()
    total = sum(len(d) + 2 for d in docs)
    n_batches = -(-total // (2 * seq)) + 2
    flat = np.concatenate([b.reshape(-1) for b in _take(_stream_iter(docs, seq_tokens=seq), n_batches)]).tolist()
    ids, rest = _parse_docs(flat[:total], docs)
    assert rest == []
    assert sorted(ids) == list(range(len(docs)))  # each document exactly once, contiguous and in order
    assert ids != list(range(len(docs)))  # shuffled


def test_streaming_next_stage_starts_after_every_document_read():
    """A stage started after the largest document position seen never repeats a document the
    previous stage read from (the position is each token's document, not a lagging checkpoint)."""
    docs = _distinct_docs()
    it = _stream_iter(docs)
    seen, last = set(), -1
    for _ in range(5):
        batch = next(it)
        tokens, doc = np.asarray(batch["tokens"]), np.asarray(batch["doc"])
        assert tokens.shape == doc.shape
        last = max(last, int(doc.max()))
        seen |= {int(t) for t in tokens.reshape(-1) if t < 256}
    # every byte value identifies its document (distinct ranges); the tokens of positions <= last
    # are exactly the documents seen so far, and a stage starting at last + 1 reads only new ones
    nxt = _stream_iter(docs, start_doc=last + 1)
    later = set()
    for _ in range(3):
        batch = next(nxt)
        first_epoch = np.asarray(batch["doc"]) < len(docs)  # a new epoch legitimately repeats documents
        assert np.asarray(batch["doc"]).min() > last
        later |= {int(t) for t in np.asarray(batch["tokens"])[first_epoch] if t < 256}
    assert seen and later and not (seen & later)


def test_streaming_state_restores():
    docs = _distinct_docs()
    it = _stream_iter(docs)
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 6)
    fresh = _stream_iter(docs)
    fresh.set_state(state)
    for a, b in zip(_take(fresh, 6), expected):
        np.testing.assert_array_equal(a, b)
