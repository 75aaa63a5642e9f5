"""`pcomp prepare`: compress a corpus with Equal-Info windows into an ArrayRecord dataset for M2.

Layout of the output directory:
    dataset.json                      parameters (the `CompressConfig`, vocab_size, seq_len, M1 fingerprint,
                                      source) and the tokenizer's directory, kind and BOS id, so a trainer
                                      learns the vocabulary without loading M1
    tokenizer/                        the EqualInfoTokenizer (so tokens can be decoded back to text)
    {split}-{shard:05d}.array_record  records of exactly seq_len tokens (uint16), the shard's documents'
                                      windows concatenated in order; the last record zero-padded
    {split}-{shard:05d}.json          the shard's counts (docs, bytes, tokens, windows); written last,
                                      so its presence marks the shard done: an interrupted run resumes
Each JAX process compresses the shards i with i % process_count == process_index, so a pod
prepares a large corpus in parallel. `pcomp.data.prepared` reads it back for training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from pcomp.compress.tokenizers import EqualInfoTokenizer
from pcomp.config import CompressConfig
from pcomp.data.prepared import DATASET_FILE, TOKENIZER_DIR
from pcomp.data.sources import load_documents
from pcomp.errors import ConfigError, DataError

SPLITS = ("train", "eval")


def prepare(*, m1_path: str, source: str, out: str, cfg: CompressConfig = CompressConfig(), seq_len: int = 256,
            shard_docs: int = 512, eval_fraction: float = 0.1, text_field: str = "text",
            data_dir: str | None = None, progress: bool = True) -> dict:
    """Compress `source`'s splits with the M1 at `m1_path` under `cfg` into `out` (see module docstring)."""
    out_dir = Path(out)
    cfg.validate()
    per_window = cfg.window_bits // cfg.token_bits
    if seq_len < 1 or seq_len % per_window:
        raise ConfigError(f"--seq-len {seq_len} must be a positive multiple of the tokens per window b/N = "
                          f"{cfg.window_bits}/{cfg.token_bits}, so records start at window boundaries")
    if shard_docs < 1:
        raise ConfigError(f"--shard-docs {shard_docs} must be >= 1")
    docs = {split: load_documents(source, split, eval_fraction=eval_fraction, text_field=text_field,
                                  data_dir=data_dir) for split in SPLITS}
    for split, split_docs in docs.items():
        if len(split_docs) == 0:
            raise DataError(f"the {split} split of {source} has no text (eval_fraction={eval_fraction}); "
                            "expected a non-empty corpus")
    tokenizer = EqualInfoTokenizer(m1_path, cfg.window_bits, cfg.token_bits, precision=cfg.precision,
                                   batch=cfg.m1_batch, segment_bytes=cfg.segment_bytes)
    params = {"kind": "pcomp-prepared", **cfg.to_dict(), "vocab_size": tokenizer.vocab_size, "seq_len": seq_len,
              "m1_fingerprint": tokenizer.m1.fingerprint, "source": source, "eval_fraction": eval_fraction,
              "text_field": text_field, "shard_docs": shard_docs, "tokenizer_dir": TOKENIZER_DIR,
              "tokenizer_kind": tokenizer.name, "bos_id": tokenizer.bos_id}
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_file = out_dir / DATASET_FILE
    if ds_file.exists():
        old = json.loads(ds_file.read_text())
        # (keys missing from an older dataset.json were not recorded then; they are not compared)
        diff = sorted(k for k in params if k in old and old[k] != params[k])
        if diff:
            raise ConfigError(f"{out_dir} holds a dataset prepared with other settings ({diff}); use another --out")
    elif jax.process_index() == 0:
        tokenizer.save(out_dir / TOKENIZER_DIR)
        _write_json(ds_file, params)
    totals = {}
    for split in SPLITS:
        split_docs = docs[split]
        n_shards = -(-len(split_docs) // shard_docs)
        mine = range(jax.process_index(), n_shards, jax.process_count())
        todo = [s for s in mine if not (out_dir / f"{split}-{s:05d}.json").exists()]
        bar = _bar(sum(min(shard_docs, len(split_docs) - s * shard_docs) for s in todo), f"prepare {split}", progress)
        for shard in todo:
            shard_docs_list = [split_docs[i]
                               for i in range(shard * shard_docs, min((shard + 1) * shard_docs, len(split_docs)))]
            _write_shard(out_dir, split, shard, shard_docs_list, tokenizer, seq_len)
            bar.update(len(shard_docs_list))
        bar.close()
        totals[split] = {"shards": n_shards, "done_here": len(todo)}
    return totals


def _write_shard(out_dir: Path, split: str, shard: int, docs, tokenizer: EqualInfoTokenizer, seq_len: int) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    per_doc = tokenizer.encode_batch(docs)
    stream = np.concatenate(per_doc + [np.zeros(0, np.int32)]).astype(np.uint16)
    n_records = -(-len(stream) // seq_len)
    padded = np.zeros(n_records * seq_len, np.uint16)
    padded[: len(stream)] = stream
    name = f"{split}-{shard:05d}"
    tmp = out_dir / f"{name}.array_record.partial"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for rec in padded.reshape(n_records, seq_len):
        writer.write(rec.tobytes())
    writer.close()
    os.replace(tmp, out_dir / f"{name}.array_record")
    per_window = tokenizer.window_bits // tokenizer.token_bits
    _write_json(out_dir / f"{name}.json", {"docs": len(docs), "bytes": int(sum(len(d) for d in docs)),
                                          "tokens": int(len(stream)), "records": int(n_records),
                                          "windows": int(len(stream) // per_window)})


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled or jax.process_index() != 0)
