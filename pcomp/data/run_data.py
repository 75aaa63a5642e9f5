"""A training run's data, as one object: batches for any (stage, start position) and the held-out set.

`RunData.load(cfg.data, ...)` reads the source once (local text, a TFDS corpus, or a `pcomp prepare`
dataset of M2 tokens), builds or reuses the tokenizer and the held-out `EvalSet`. The trainer then
asks `batches(seq_tokens, start)` for a checkpointable grain iterator of one stage and
`next_start(...)` for where the following stage begins; BOS (`data.bos_first`) is set inside the
pipeline. A prepared dataset gives its vocabulary from its own `dataset.json`: training M2 never
loads the compressor (M1, numba) it was made with.

Per-process shards: each JAX process holds, tokenizes and reads only its own part of the training
split: documents `process_index::process_count` of a local source (a directory or plain JSONL is
read lazily, `sources.LocalDocuments`: only this process's documents, the held-out ones, the one the
held-out cut falls in and a SentencePiece sample, the same on every host, are read),
records `process_index::process_count` of a prepared dataset (read lazily, never the whole split),
documents `process_index::process_count` of a TFDS corpus (streamed). Each process packs and
shuffles its shard alone and yields its `global_batch / process_count` rows; with one process the
order is the one of an unsharded run. The held-out set is the same on every process.

Where stage 2 of patch-level training reads: in memory, the block after the last one stage 1 read
in the same shuffled block order, which continues into further epochs once the corpus is exhausted
(so in a multi-epoch run stage 2 continues the epoch sequence; it reads unseen text only while stage 1
has read less than one epoch); streaming,
the document after the last one any process read from. In memory, blocks count in this process's
shard (the same number on every process).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from pcomp.config import DataConfig
from pcomp.data import pipeline
from pcomp.data.prepared import PreparedDataset, RecordTokens, is_prepared
from pcomp.data.sources import check_source, load_documents
from pcomp.data.tokenizers import BUILD_KINDS, Tokenizer, build_tokenizer, load_tokenizer
from pcomp.errors import ConfigError, DataError


def vocab_size_before_reading(dc: DataConfig, saved_tokenizer: Path, *, check_source_exists: bool = True) -> int:
    """The vocabulary the run's model gets, found without reading any text (so a run can be compiled
    and checked against the device's memory first): a prepared dataset's recorded size, the saved
    tokenizer's (a resumed run) or the named tokenizer directory's, 258 for bytes; for a SentencePiece
    tokenizer still to be trained on the data, data.vocab_size (the most it can have). A local source
    that is missing or empty is a DataError here (`sources.check_source`), unless `check_source_exists`
    is False (`pcomp compile`, which reads no data and may run where the data is not)."""
    if is_prepared(dc.source):
        return PreparedDataset(dc.source).vocab_size
    if check_source_exists:
        check_source(dc.source)  # a missing or empty source fails here, not after compiling
    if (saved_tokenizer / "tokenizer.json").exists():
        return load_tokenizer(saved_tokenizer).vocab_size
    if dc.tokenizer == "sentencepiece":
        return dc.vocab_size
    return build_tokenizer(dc.tokenizer).vocab_size  # bytes, or a saved tokenizer directory


@dataclasses.dataclass
class RunData:
    """See the module docstring. `tokens` (in memory) or `docs` (streaming) hold the training split."""

    cfg: DataConfig
    vocab_size: int
    bos_id: int | None
    eval_set: pipeline.EvalSet
    global_batch: int
    block_tokens: int  # in-memory blocks: K * seq_len, the same in every stage
    tokenizer: Tokenizer | None  # None for prepared datasets (their tokenizer directory is copied)
    tokens: np.ndarray | RecordTokens | None = None  # this process's shard
    docs: object = None
    prepared: PreparedDataset | None = None
    process_index: int = 0
    process_count: int = 1

    @property
    def streaming(self) -> bool:
        return self.docs is not None

    @classmethod
    def load(cls, dc: DataConfig, *, saved_tokenizer: Path, global_batch: int, block_tokens: int,
             process_index: int | None = None, process_count: int | None = None) -> RunData:
        """Read `dc.source`; reuse the tokenizer in `saved_tokenizer` if one is there (a resumed run).

        `process_index` / `process_count` (default: JAX's) choose this process's shard of the
        training split (tests simulate several processes with them)."""
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process index {process_index} is not in [0, {process_count})")
        pipeline.local_rows(global_batch, process_count)
        common = dict(cfg=dc, global_batch=global_batch, block_tokens=block_tokens,
                      process_index=process_index, process_count=process_count)
        if is_prepared(dc.source):  # tokens made by `pcomp prepare` (M2 over compressed text)
            prepared = PreparedDataset(dc.source)
            prepared.verify("train", process_index, process_count)  # damage fails here, before any write
            train_tokens = prepared.tokens("train", process_index, process_count)
            if train_tokens.n_records == 0:
                raise DataError(f"the prepared dataset {dc.source} has fewer training records than the "
                                f"{process_count} processes; prepare more data")
            # eval_max_bytes bounds the held-out split by whole shards (bytes per token vary)
            eval_tokens, eval_bytes = prepared.stream("eval", dc.eval_max_bytes)
            bos = prepared.bos_id
            _check_bos(dc, bos, f"the prepared dataset {dc.source}")
            eval_set = pipeline.eval_windows(eval_tokens, dc.seq_len, eval_bytes, bos=bos if dc.bos_first else None)
            return cls(vocab_size=prepared.vocab_size, bos_id=bos, eval_set=eval_set, tokenizer=None,
                       tokens=train_tokens, prepared=prepared, **common)
        kw = dict(eval_fraction=dc.eval_fraction, text_field=dc.text_field, data_dir=dc.data_dir or None)
        train_docs = load_documents(dc.source, "train", **kw)
        if (saved_tokenizer / "tokenizer.json").exists():  # a resumed run keeps its tokenizer
            tokenizer = load_tokenizer(saved_tokenizer)
            kind = tokenizer.to_config()["kind"]
            if dc.tokenizer in BUILD_KINDS and kind != dc.tokenizer:
                raise ConfigError(f"{saved_tokenizer} holds a {kind!r} tokenizer, but this run asks for "
                                  f"data.tokenizer={dc.tokenizer!r}; use another training.workdir")
        else:
            tokenizer = build_tokenizer(dc.tokenizer, train_docs, vocab_size=dc.vocab_size)  # same on every host
        _check_bos(dc, tokenizer.bos_id, tokenizer.name)
        eval_set = pipeline.eval_set(load_documents(dc.source, "eval", **kw), tokenizer, dc.seq_len,
                                     dc.eval_max_bytes, bos_first=dc.bos_first)
        if dc.source.startswith("tfds:"):
            return cls(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eval_set=eval_set,
                       tokenizer=tokenizer, docs=train_docs, **common)
        shard = train_docs[process_index::process_count]
        if len(shard) == 0:
            raise DataError(f"data source {dc.source} has {len(train_docs)} training documents, fewer than the "
                            f"{process_count} processes; split it into more files or JSON lines")
        return cls(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eval_set=eval_set, tokenizer=tokenizer,
                   tokens=pipeline.token_stream(shard, tokenizer), **common)

    def save_tokenizer(self, directory: Path) -> None:
        """Write the run's tokenizer to `directory` (a copy of a prepared dataset's)."""
        if self.prepared is not None:
            shutil.copytree(self.prepared.tokenizer_dir, directory, dirs_exist_ok=True)
        else:
            self.tokenizer.save(directory)

    def batches(self, seq_tokens: int, start: int) -> grain.DatasetIterator:
        """This process's batches {"tokens": [B_local, seq_tokens]} of a stage that starts at block
        (in memory, counted in this process's shard) or document (streaming) `start`; streaming
        batches also carry "doc"."""
        dc = self.cfg
        common = dict(seed=dc.seed, threads=dc.read_threads, bos=self.bos_id if dc.bos_first else None)
        if self.streaming:
            return pipeline.streaming_iterator(self.docs, self.tokenizer, seq_tokens=seq_tokens, start_doc=start,
                                               global_batch=self.global_batch, process_index=self.process_index,
                                               process_count=self.process_count, **common)
        # this process's shard, packed and shuffled alone: a one-process iterator of the local rows
        return pipeline.in_memory_iterator(self.tokens, seq_tokens=seq_tokens, block_tokens=self.block_tokens,
                                           start_block=start, global_batch=self.local_batch, **common)

    @property
    def local_batch(self) -> int:
        """Rows of each global batch that this process yields."""
        return pipeline.local_rows(self.global_batch, self.process_count)

    def next_start(self, seq_tokens: int, steps: int, start: int, last_doc: int) -> int:
        """Where the stage after one of `steps` steps of `seq_tokens` that began at `start` begins: the
        first block it did not touch (in memory) or the document after the last one any process read
        from (streaming; `last_doc` is this process's largest "doc")."""
        if self.streaming:
            return int(np.max(multihost_utils.process_allgather(np.asarray(last_doc)))) + 1
        return start + steps * self.local_batch * seq_tokens // self.block_tokens


def _check_bos(dc: DataConfig, bos: int | None, what: str) -> None:
    if dc.bos_first and bos is None:
        raise ConfigError(f"data.bos_first needs a tokenizer with BOS; {what} has none")
