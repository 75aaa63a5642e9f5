"""`pcomp prepare`: compress a corpus with Equal-Info windows into an ArrayRecord dataset for M2.

Layout of the output directory:
    dataset.json                      parameters (b, N, vocab, seq_len, M1 fingerprint, source)
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
from pcomp.data.prepared import DATASET_FILE
from pcomp.data.sources import load_documents
from pcomp.errors import ConfigError


def prepare(*, m1_path: str, source: str, out: str, window_bits: int = 16, token_bits: int = 16,
            seq_len: int = 256, shard_docs: int = 512, eval_fraction: float = 0.1, text_field: str = "text",
            data_dir: str | None = None, batch: int = 256, progress: bool = True) -> dict:
    out_dir = Path(out)
    tokenizer = EqualInfoTokenizer(m1_path, window_bits, token_bits, batch=batch)  # validates b and N
    per_window = window_bits // token_bits
    if seq_len % per_window:
        raise ConfigError(f"--seq-len {seq_len} must be a multiple of the tokens per window b/N = "
                          f"{window_bits}/{token_bits}, so records start at window boundaries")
    if shard_docs < 1:
        raise ConfigError(f"--shard-docs {shard_docs} must be >= 1")
    params = {"kind": "pcomp-prepared", "window_bits": window_bits, "token_bits": token_bits,
              "vocab_size": tokenizer.vocab_size, "seq_len": seq_len, "m1_fingerprint": tokenizer.m1.fingerprint,
              "source": source, "eval_fraction": eval_fraction, "text_field": text_field, "shard_docs": shard_docs}
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_file = out_dir / DATASET_FILE
    if ds_file.exists():
        old = json.loads(ds_file.read_text())
        if old != params:
            diff = sorted(k for k in params if old.get(k) != params[k])
            raise ConfigError(f"{out_dir} holds a dataset prepared with other settings ({diff}); use another --out")
    elif jax.process_index() == 0:
        tokenizer.save(out_dir / "tokenizer")
        _write_json(ds_file, params)
    totals = {}
    for split in ("train", "eval"):
        docs = load_documents(source, split, eval_fraction=eval_fraction, text_field=text_field, data_dir=data_dir)
        n_shards = -(-len(docs) // shard_docs)
        mine = range(jax.process_index(), n_shards, jax.process_count())
        todo = [s for s in mine if not (out_dir / f"{split}-{s:05d}.json").exists()]
        bar = _bar(sum(min(shard_docs, len(docs) - s * shard_docs) for s in todo), f"prepare {split}", progress)
        for shard in todo:
            shard_docs_list = [docs[i] for i in range(shard * shard_docs, min((shard + 1) * shard_docs, len(docs)))]
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
