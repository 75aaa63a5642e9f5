"""grain pipelines: tokenize, add BOS/EOS per document, pack into fixed-length sequences, shuffle,
shard per process, batch; and the exact held-out evaluation stream.

Two packers (`pcomp.data.run_data.RunData` picks one for a run):
  * in memory, for local sources (embedded corpus, files, JSONL) and prepared datasets: a token
    stream (a process's shard, see `RunData`) cut into blocks of `block_tokens`; blocks are shuffled
    (reshuffled every epoch) and each block yields `block_tokens / seq_tokens` sequences. A run
    keeps the same blocks across its stages (block = K * seq_len), so stage 2 of patch-level
    training continues exactly at the first block stage 1 did not read.
  * streaming, for TFDS corpora too large for memory: documents are shuffled, tokenized lazily and
    concatenated-then-split by grain; stage 2 continues after the last document stage 1 read from
    (a partly read one is skipped).
Both iterators are grain `DatasetIterator`s of {"tokens": [B_local, seq_tokens]} (streaming adds
"doc") whose state goes into the orbax checkpoint. With `bos` (a model trained with `data.bos_first`)
position 0 of every sequence is BOS, set inside the pipeline.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from pcomp.data.tokenizers import Tokenizer
from pcomp.errors import DataError


def document_tokens(tokenizer: Tokenizer, doc: bytes) -> np.ndarray:
    """[BOS] + ids + [EOS], with whichever of BOS / EOS the tokenizer has."""
    return _with_specials(tokenizer, tokenizer.encode(doc))


def _with_specials(tokenizer: Tokenizer, ids: np.ndarray) -> np.ndarray:
    parts = [np.asarray([tokenizer.bos_id], np.int32)] if tokenizer.bos_id is not None else []
    parts.append(np.asarray(ids, np.int32))
    if tokenizer.eos_id is not None:
        parts.append(np.asarray([tokenizer.eos_id], np.int32))
    return np.concatenate(parts)


def token_stream(docs: Sequence[bytes], tokenizer: Tokenizer) -> np.ndarray:
    """All documents as one int32 stream."""
    if len(docs) == 0:
        return np.zeros((0,), np.int32)
    return np.concatenate([_with_specials(tokenizer, ids) for ids in tokenizer.encode_batch(docs)])


def local_rows(global_batch: int, process_count: int) -> int:
    """Rows of each global batch that one of `process_count` processes yields."""
    if global_batch % process_count:
        raise DataError(f"global batch {global_batch} is not divisible by {process_count} processes")
    return global_batch // process_count


def in_memory_iterator(tokens: np.ndarray, *, seq_tokens: int, block_tokens: int, global_batch: int,
                       seed: int, start_block: int = 0, process_index: int = 0, process_count: int = 1,
                       threads: int = 2, bos: int | None = None) -> grain.DatasetIterator:
    """Batches {"tokens": [B_local, seq_tokens]} of globally shuffled blocks of one token stream."""
    if block_tokens % seq_tokens:
        raise DataError(f"block of {block_tokens} tokens is not a multiple of the sequence length {seq_tokens}")
    n_blocks = len(tokens) // block_tokens
    if n_blocks == 0:
        raise DataError(
            f"the training text has {len(tokens)} tokens, fewer than one sequence of {block_tokens}; "
            "use more data or a shorter data.seq_len"
        )
    per_block = block_tokens // seq_tokens
    local = local_rows(global_batch, process_count)
    order = grain.MapDataset.range(n_blocks).shuffle(seed=seed).repeat()

    def fetch(j: int) -> np.ndarray:
        g, r = divmod(j, local)
        s = g * global_batch + process_index * local + r  # sequence index within the stage
        block = order[start_block + s // per_block]
        off = block * block_tokens + (s % per_block) * seq_tokens
        return _bos_first(tokens[off : off + seq_tokens], bos)

    ds = grain.MapDataset.range(sys.maxsize // 2).map(fetch).batch(local, drop_remainder=True)
    ds = ds.map(lambda tokens_bt: {"tokens": tokens_bt})
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)))


def streaming_iterator(docs: Sequence[bytes], tokenizer: Tokenizer, *, seq_tokens: int, global_batch: int,
                       seed: int, start_doc: int = 0, process_index: int = 0, process_count: int = 1,
                       threads: int = 2, bos: int | None = None) -> grain.DatasetIterator:
    """Batches {"tokens": [B_local, seq_tokens], "doc": [B_local, seq_tokens]} from lazily tokenized,
    shuffled, concatenated-then-split documents. "doc" is each token's document position in this
    process's shuffled stream (>= start_doc): a next stage starts after the largest one it saw."""
    if len(docs) == 0:
        raise DataError("the training split has no documents")
    local = local_rows(global_batch, process_count)
    ds = grain.MapDataset.source(docs)[process_index::process_count].shuffle(seed=seed).repeat()

    def tokens(i: int, doc: bytes) -> dict:
        t = document_tokens(tokenizer, doc)
        return {"tokens": t, "doc": np.full(len(t), start_doc + i, np.int64)}

    ds = ds[start_doc:].map_with_index(tokens)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=16))
    it = ConcatThenSplitIterDataset(it, length_struct={"tokens": seq_tokens, "doc": seq_tokens})
    it = it.map(lambda ex: {"tokens": _bos_first(ex["tokens"], bos), "doc": ex["doc"]})
    return iter(it.batch(local, drop_remainder=True))


def _bos_first(tokens_t: np.ndarray, bos: int | None) -> np.ndarray:
    """`tokens_t` with BOS at position 0 (a copy), or unchanged when `bos` is None."""
    if bos is None:
        return tokens_t
    out = np.array(tokens_t, np.int32)
    out[0] = bos
    return out


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Held-out text as batches scored exactly once per token, and its size in UTF-8 bytes."""

    tokens: np.ndarray  # [n_seq, seq_len] int32
    mask: np.ndarray  # [n_seq, seq_len] int32; 1 = real token
    n_bytes: int
    n_targets: int

    def batches(self, global_batch: int):
        n = len(self.tokens)
        for i in range(0, n, global_batch):
            tok, msk = self.tokens[i : i + global_batch], self.mask[i : i + global_batch]
            pad = global_batch - len(tok)
            if pad:
                tok = np.concatenate([tok, np.zeros((pad, tok.shape[1]), np.int32)])
                msk = np.concatenate([msk, np.zeros((pad, msk.shape[1]), np.int32)])
            yield {"tokens": tok, "mask": msk}


def eval_set(docs: Sequence[bytes], tokenizer: Tokenizer, seq_len: int, max_bytes: int = 0,
             bos_first: bool = False) -> EvalSet:
    """The held-out documents as an `EvalSet` (see `eval_windows`).

    With `max_bytes` > 0 whole documents are taken until the budget is reached (the last one cut).
    `bos_first` (a model trained with `data.bos_first`) puts BOS at position 0 of every window.
    """
    taken, n_bytes = [], 0
    for doc in docs:
        if max_bytes and n_bytes + len(doc) > max_bytes:
            doc = _utf8_prefix(doc, max_bytes - n_bytes)
            if doc:
                taken.append(doc)
                n_bytes += len(doc)
            break
        taken.append(doc)
        n_bytes += len(doc)
    return eval_windows(token_stream(taken, tokenizer), seq_len, n_bytes,
                        bos=tokenizer.bos_id if bos_first else None)


def eval_windows(stream: np.ndarray, seq_len: int, n_bytes: int, bos: int | None = None) -> EvalSet:
    """Windows of `seq_len` tokens with stride seq_len - 1 over a held-out token stream, so every
    token but the very first is a prediction target exactly once; the last window is padded and masked.

    Default: window i is stream[i*(L-1) : i*(L-1) + L] (its first token is context only). With `bos`
    (a model trained with BOS at position 0 never saw anything else there) window i is
    [bos] + stream[1 + i*(L-1) : 1 + (i+1)*(L-1)]: the same targets, each predicted from BOS and the
    window's earlier tokens, as M1 does inside the compressor."""
    if len(stream) < 2:
        raise DataError("the held-out split is empty; set data.eval_fraction > 0 or use more data")
    stride = seq_len - 1
    n_seq = -(-(len(stream) - 1) // stride)
    tokens = np.zeros((n_seq, seq_len), np.int32)
    mask = np.zeros((n_seq, seq_len), np.int32)
    for i in range(n_seq):
        if bos is None:
            piece = stream[i * stride : i * stride + seq_len]
        else:
            piece = np.concatenate([[bos], stream[1 + i * stride : 1 + (i + 1) * stride]])
        tokens[i, : len(piece)] = piece
        mask[i, : len(piece)] = 1
    return EvalSet(tokens, mask, n_bytes, len(stream) - 1)


def _utf8_prefix(doc: bytes, n: int) -> bytes:
    """The longest prefix of at most n bytes that does not end inside a UTF-8 sequence."""
    cut = max(n, 0)
    while 0 < cut < len(doc) and (doc[cut] & 0xC0) == 0x80:
        cut -= 1
    return doc[:cut]
