"""A training run's data, as one object: batches for any (stage, start position) and the held-out set.

`RunData.load(cfg.data, ...)` reads the source once (local text, a TFDS corpus, or a `pcomp prepare`
dataset of M2 tokens), builds or reuses the tokenizer and the held-out `EvalSet`. The trainer then
asks `batches(seq_tokens, start)` for a checkpointable grain iterator of one stage and
`next_start(...)` for where the following stage begins; BOS (`data.bos_first`) is set inside the
pipeline. A prepared dataset gives its vocabulary from its own `dataset.json`: training M2 never
loads the compressor (M1, numba) it was made with.

Where stage 2 of patch-level training reads: in memory, the block after the last one stage 1 read
in the same shuffled block order, which continues into further epochs once the corpus is exhausted
(so in a multi-epoch run stage 2 continues the epoch sequence; it reads unseen text only while stage 1
has read less than one epoch); streaming,
the document after the last one any process read from.
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
from pcomp.data.prepared import PreparedDataset, is_prepared
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import BUILD_KINDS, Tokenizer, build_tokenizer, load_tokenizer
from pcomp.errors import ConfigError


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
    tokens: np.ndarray | None = None
    docs: object = None
    prepared: PreparedDataset | None = None

    @property
    def streaming(self) -> bool:
        return self.docs is not None

    @classmethod
    def load(cls, dc: DataConfig, *, saved_tokenizer: Path, global_batch: int, block_tokens: int) -> RunData:
        """Read `dc.source`; reuse the tokenizer in `saved_tokenizer` if one is there (a resumed run)."""
        common = dict(cfg=dc, global_batch=global_batch, block_tokens=block_tokens)
        if is_prepared(dc.source):  # tokens made by `pcomp prepare` (M2 over compressed text)
            if dc.eval_max_bytes:
                raise ConfigError("data.eval_max_bytes is not supported for prepared datasets (bytes per token vary)")
            prepared = PreparedDataset(dc.source)
            train_tokens, _ = prepared.stream("train")
            eval_tokens, eval_bytes = prepared.stream("eval")
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
            tokenizer = build_tokenizer(dc.tokenizer, train_docs, vocab_size=dc.vocab_size)
        _check_bos(dc, tokenizer.bos_id, tokenizer.name)
        eval_set = pipeline.eval_set(load_documents(dc.source, "eval", **kw), tokenizer, dc.seq_len,
                                     dc.eval_max_bytes, bos_first=dc.bos_first)
        if dc.source.startswith("tfds:"):
            return cls(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eval_set=eval_set,
                       tokenizer=tokenizer, docs=train_docs, **common)
        return cls(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eval_set=eval_set, tokenizer=tokenizer,
                   tokens=pipeline.token_stream(train_docs, tokenizer), **common)

    def save_tokenizer(self, directory: Path) -> None:
        """Write the run's tokenizer to `directory` (a copy of a prepared dataset's)."""
        if self.prepared is not None:
            shutil.copytree(self.prepared.tokenizer_dir, directory, dirs_exist_ok=True)
        else:
            self.tokenizer.save(directory)

    def batches(self, seq_tokens: int, start: int) -> grain.DatasetIterator:
        """This process's batches {"tokens": [B_local, seq_tokens]} of a stage that starts at block
        (in memory) or document (streaming) `start`; streaming batches also carry "doc"."""
        dc = self.cfg
        common = dict(global_batch=self.global_batch, seed=dc.seed, process_index=jax.process_index(),
                      process_count=jax.process_count(), threads=dc.read_threads,
                      bos=self.bos_id if dc.bos_first else None)
        if self.streaming:
            return pipeline.streaming_iterator(self.docs, self.tokenizer, seq_tokens=seq_tokens, start_doc=start,
                                               **common)
        return pipeline.in_memory_iterator(self.tokens, seq_tokens=seq_tokens, block_tokens=self.block_tokens,
                                           start_block=start, **common)

    def next_start(self, seq_tokens: int, steps: int, start: int, last_doc: int) -> int:
        """Where the stage after one of `steps` steps of `seq_tokens` that began at `start` begins: the
        first block it did not touch (in memory) or the document after the last one any process read
        from (streaming; `last_doc` is this process's largest "doc")."""
        if self.streaming:
            return int(np.max(multihost_utils.process_allgather(np.asarray(last_doc)))) + 1
        return start + steps * self.global_batch * seq_tokens // self.block_tokens


def _check_bos(dc: DataConfig, bos: int | None, what: str) -> None:
    if dc.bos_first and bos is None:
        raise ConfigError(f"data.bos_first needs a tokenizer with BOS; {what} has none")
