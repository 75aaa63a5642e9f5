"""`pcomp prepare`: tokenize a corpus (Equal-Info windows by default, or any other tokenizer of the
study, `TOKENIZER_KINDS`) into an ArrayRecord dataset for M2.

Layout of the output directory:
    dataset.json                      parameters (the tokenizer kind, the `CompressConfig`, vocab_size,
                                      seq_len, M1 fingerprint for the kinds that run M1, source) and the
                                      tokenizer's directory, kind and BOS id, so a trainer learns the
                                      vocabulary without loading M1
    tokenizer/                        the tokenizer (so tokens can be decoded back to text); for the kinds
                                      that run M1, with its own copy of M1 (tokenizer/m1)
    {split}-{shard:05d}.array_record  records of exactly seq_len tokens (uint16), the shard's documents
                                      concatenated in order, each as [BOS] + ids + [EOS] with whichever
                                      specials the tokenizer has (compressed ones have none); the last
                                      record zero-padded
    {split}-{shard:05d}.json          the shard's counts (docs, bytes, tokens, records; windows for
                                      equal_info); written last, so its presence marks the shard done: an
                                      interrupted run resumes (a fitted tokenizer, static_ac or
                                      sentencepiece, is then read back, not fitted again)
Each JAX process compresses the shards i with i % process_count == process_index, so a pod
prepares a large corpus in parallel. `pcomp.data.prepared` reads it back for training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from pcomp.compress.tokenizers import ArithmeticCodingTokenizer, EqualInfoTokenizer, GZipTokenizer, StaticACTokenizer
from pcomp.config import TOKENIZER_KINDS, CompressConfig
from pcomp.data.prepared import DATASET_FILE, TOKENIZER_DIR
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from pcomp.errors import ConfigError, DataError
from pcomp.output import check_replaceable, write_file

SPLITS = ("train", "eval")
MAX_VOCAB = 1 << 16  # records hold uint16 tokens


_M1_KINDS = ("equal_info", "ac")
_FITTED_KINDS = ("static_ac", "sentencepiece")  # fitted on the train split: resumed from the saved one


def _check_kind(kind: str, m1_path: str | None) -> None:
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"--tokenizer {kind!r}: expected one of {', '.join(TOKENIZER_KINDS)}")
    if kind in _M1_KINDS and not m1_path:
        raise ConfigError(f"--tokenizer {kind} runs M1: give --m1 RUN_DIR")


def make_tokenizer(kind: str, *, m1_path: str | None, cfg: CompressConfig, train_docs, vocab_size: int) -> Tokenizer:
    """The tokenizer `pcomp prepare --tokenizer KIND` writes a dataset with (see TOKENIZER_KINDS):
    equal_info = EqualInfoAC[b, 2**N], ac = plain arithmetic coding under M1 (the paper's
    ArithmeticCoding), gzip, static_ac (fitted on `train_docs`), bytes, sentencepiece (trained on
    `train_docs` with `vocab_size` pieces)."""
    _check_kind(kind, m1_path)
    if kind == "equal_info":
        return EqualInfoTokenizer(m1_path, cfg.window_bits, cfg.token_bits, precision=cfg.precision,
                                  batch=cfg.m1_batch, segment_bytes=cfg.segment_bytes)
    if kind == "ac":
        return ArithmeticCodingTokenizer(m1_path, cfg.token_bits, precision=cfg.precision, batch=cfg.m1_batch)
    if kind == "gzip":
        return GZipTokenizer(cfg.token_bits)
    if kind == "static_ac":
        return StaticACTokenizer.fit(train_docs, cfg.token_bits, cfg.precision)
    if not 1 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"--vocab-size {vocab_size}: expected 1 .. {MAX_VOCAB} (tokens are stored as uint16)")
    try:
        return build_tokenizer(kind, train_docs, vocab_size=vocab_size)
    except RuntimeError as e:  # sentencepiece's trainer refusing the settings (e.g. too few pieces)
        raise ConfigError(f"--vocab-size {vocab_size}: sentencepiece cannot train on the train split: "
                          f"{str(e).splitlines()[0]}") from None


def prepare(*, m1_path: str | None, source: str, out: str, cfg: CompressConfig = CompressConfig(), seq_len: int = 256,
            shard_docs: int = 512, eval_fraction: float = 0.1, text_field: str = "text",
            data_dir: str | None = None, progress: bool = True, tokenizer: str = "equal_info",
            vocab_size: int = 4096) -> dict:
    """Tokenize `source`'s splits with `tokenizer` (see `make_tokenizer`; M1 from `m1_path`) under `cfg`
    into `out` (see module docstring)."""
    kind = tokenizer
    out_dir = Path(out)
    cfg.validate()
    _check_kind(kind, m1_path)
    per_window = cfg.window_bits // cfg.token_bits if kind == "equal_info" else 1
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
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_file = out_dir / DATASET_FILE
    old = json.loads(ds_file.read_text()) if ds_file.exists() else None
    if old is not None and kind in _FITTED_KINDS and old.get("tokenizer", "equal_info") == kind:
        tok = load_tokenizer(out_dir / old.get("tokenizer_dir", TOKENIZER_DIR))  # the one the shards were made with
    else:
        tok = make_tokenizer(kind, m1_path=m1_path, cfg=cfg, train_docs=docs["train"], vocab_size=vocab_size)
    params = {"kind": "pcomp-prepared", "tokenizer": kind, **cfg.to_dict(), "vocab_size": tok.vocab_size,
              "seq_len": seq_len, "m1_fingerprint": tok.m1.fingerprint if kind in _M1_KINDS else None,
              "source": source, "eval_fraction": eval_fraction, "text_field": text_field, "shard_docs": shard_docs,
              "tokenizer_dir": TOKENIZER_DIR, "tokenizer_kind": tok.name, "bos_id": tok.bos_id}
    if kind == "sentencepiece":
        params["sentencepiece_vocab_size"] = vocab_size
    if old is not None:
        # (keys missing from an older dataset.json were not recorded then; they are not compared)
        diff = sorted(k for k in params if k in old and old[k] != params[k])
        if "tokenizer" not in old and kind != "equal_info":
            diff.append("tokenizer")
        if diff:
            raise ConfigError(f"{out_dir} holds a dataset prepared with other settings ({diff}); use another --out")
    elif jax.process_index() == 0:
        tok.save(out_dir / TOKENIZER_DIR)
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
            _write_shard(out_dir, split, shard, shard_docs_list, tok, seq_len,
                         per_window if kind == "equal_info" else None)
            bar.update(len(shard_docs_list))
        bar.close()
        totals[split] = {"shards": n_shards, "done_here": len(todo)}
    return totals


def _write_shard(out_dir: Path, split: str, shard: int, docs, tokenizer: Tokenizer, seq_len: int,
                 per_window: int | None) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    # each document as the text pipeline makes it: [BOS] + ids + [EOS], with whichever the tokenizer has
    per_doc = [np.concatenate([np.asarray(bos, np.int64), np.asarray(ids, np.int64), np.asarray(eos, np.int64)])
               for ids in tokenizer.encode_batch(docs)]
    stream = np.concatenate(per_doc + [np.zeros(0, np.int32)]).astype(np.uint16)
    n_records = -(-len(stream) // seq_len)
    padded = np.zeros(n_records * seq_len, np.uint16)
    padded[: len(stream)] = stream
    name = f"{split}-{shard:05d}"
    tmp = out_dir / f"{name}.array_record.partial"
    check_replaceable(out_dir / f"{name}.array_record")  # a device or FIFO there is not ours to rename over
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for rec in padded.reshape(n_records, seq_len):
        writer.write(rec.tobytes())
    writer.close()
    os.replace(tmp, out_dir / f"{name}.array_record")
    _write_json(out_dir / f"{name}.json", {"docs": len(docs), "bytes": int(sum(len(d) for d in docs)),
                                          "tokens": int(len(stream)), "records": int(n_records),
                                          **({} if per_window is None
                                             else {"windows": int(len(stream) // per_window)})})


def _write_json(path: Path, obj: dict) -> None:
    check_replaceable(path)
    write_file(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled or jax.process_index() != 0)
