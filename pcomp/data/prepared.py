"""Read a dataset written by `pcomp prepare` (ArrayRecord records of M2 tokens) through grain.

`dataset.json` describes it, including the vocabulary size and where its tokenizer is saved, so a
trainer sizes M2 from the metadata alone, without loading the tokenizer (or M1, numba, ...).
The training split is read lazily (`tokens`): a `RecordTokens` view reads only the records a batch
touches through grain's `ArrayRecordDataSource`, so host memory does not grow with the split, and
each process reads only its own records.
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from pcomp.errors import DataError

DATASET_FILE = "dataset.json"
TOKENIZER_DIR = "tokenizer"  # the dataset's tokenizer, saved by `Tokenizer.save`


def is_prepared(source: str) -> bool:
    return (Path(source) / DATASET_FILE).is_file()


class PreparedDataset:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not is_prepared(str(self.path)):
            raise DataError(f"{self.path} is not a prepared dataset (no {DATASET_FILE}; run pcomp prepare)")
        try:
            self.params = json.loads((self.path / DATASET_FILE).read_text())
            self.seq_len = int(self.params["seq_len"])
            self.vocab_size = int(self.params["vocab_size"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path / DATASET_FILE} is not a valid dataset description ({e!r})") from None

    @property
    def tokenizer_dir(self) -> Path:
        """Directory of the saved tokenizer (`pcomp.data.tokenizers.load_tokenizer` restores it)."""
        return self.path / self.params.get("tokenizer_dir", TOKENIZER_DIR)

    @property
    def tokenizer_kind(self) -> str:
        """The tokenizer's kind, e.g. "equal_info" (read from its tokenizer.json for older datasets)."""
        if "tokenizer_kind" in self.params:
            return self.params["tokenizer_kind"]
        from pcomp.data.tokenizers import CONFIG_FILENAME

        return json.loads((self.tokenizer_dir / CONFIG_FILENAME).read_text())["kind"]

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's BOS id; compressed-text tokenizers have none."""
        return self.params.get("bos_id")

    def _shards(self, split: str) -> list[tuple[Path, dict]]:
        metas = sorted(self.path.glob(f"{split}-*.json"))
        records = sorted(self.path.glob(f"{split}-*.array_record"))
        if not metas or len(metas) != len(records):
            raise DataError(f"{self.path}: the {split} split is incomplete ({len(metas)} finished shards, "
                            f"{len(records)} record files); run pcomp prepare again to finish it")
        return [(m.with_suffix(".array_record"), json.loads(m.read_text())) for m in metas]

    def verify(self, split: str, process_index: int = 0, process_count: int = 1) -> None:
        """Read every record of shards `process_index::process_count` of `split` once (ArrayRecord
        checks each chunk's hashes and the footer), so a damaged shard is one DataError naming it
        before a run writes anything, not a Riegeli traceback mid-training. The processes of a job
        share the work: together they read the split once, shards in parallel (RESULTS.md gives the
        measured rate); a process that finds damage stops, and the job with it."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        shards = self._shards(split)[process_index::process_count]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # C++ reads, overlapping across shards
            for (f, meta), problem in zip(shards, pool.map(_check_shard, [f for f, _ in shards])):
                if isinstance(problem, Exception):
                    raise _corrupt_shard(f, problem)
                if problem != meta.get("records", problem):
                    raise _corrupt_shard(f, f"it holds {problem} records, its {f.with_suffix('.json').name} says "
                                            f"{meta['records']}")

    def records(self, split: str) -> grain.MapDataset:
        """The split's fixed-length records (int32 [seq_len]) as a random-access grain dataset."""
        files = [str(f) for f, _ in self._shards(split)]
        src = grain.sources.ArrayRecordDataSource(files)
        return grain.MapDataset.source(src).map(lambda r: np.frombuffer(r, np.uint16).astype(np.int32))

    def stream(self, split: str, max_bytes: int = 0) -> tuple[np.ndarray, int]:
        """(the split's tokens in order without padding, UTF-8 bytes they encode), read into memory
        (for the held-out split; train through `tokens`).

        With `max_bytes` > 0, whole shards are taken in order while their text stays within
        `max_bytes` (at least the first shard): bytes per token vary and only a shard's total is
        recorded, so the bound is by shard and the byte count stays exact."""
        parts, n_bytes = [], 0
        for f, meta in self._shards(split):
            if max_bytes and parts and n_bytes + meta["bytes"] > max_bytes:
                break
            try:
                src = grain.sources.ArrayRecordDataSource([str(f)])
                toks = np.frombuffer(b"".join(src[i] for i in range(len(src))), np.uint16).astype(np.int32)
            except (RuntimeError, OSError, ValueError) as e:
                raise _corrupt_shard(f, e) from None
            parts.append(toks[: meta["tokens"]])
            n_bytes += meta["bytes"]
        return np.concatenate(parts), n_bytes

    def tokens(self, split: str, process_index: int = 0, process_count: int = 1) -> RecordTokens:
        """The split's tokens in records `process_index::process_count` (each record's padding
        dropped), as a lazy `RecordTokens`; with one process, every token in order, as `stream`."""
        shards = self._shards(split)
        files = [str(f) for f, _ in shards]
        src = grain.sources.ArrayRecordDataSource(files)
        counts = [(int(meta["tokens"]), -(-int(meta["tokens"]) // self.seq_len)) for _, meta in shards]
        if sum(n for _, n in counts) != len(src):
            raise DataError(f"{self.path}: the {split} split's record files hold {len(src)} records, its shard "
                            f"descriptions {sum(n for _, n in counts)}; run pcomp prepare again")
        return RecordTokens(src, self.seq_len, counts, process_index, process_count)


def _check_shard(path: Path) -> int | Exception:
    """The number of records in the ArrayRecord file `path`, every one read (each chunk's hashes
    checked), or the exception reading it raised."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(str(path))
        try:
            n = reader.num_records()
            reader.read_all()
        finally:
            reader.close()
    except (RuntimeError, OSError, ValueError) as e:
        return e
    return n


def _corrupt_shard(shard: Path, e) -> DataError:
    """One line naming the damaged shard and how `pcomp prepare` rewrites it (it skips shards whose
    .json exists, so both files go)."""
    why = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return DataError(f"the prepared shard {shard} is damaged ({why}); delete it and "
                     f"{shard.with_suffix('.json').name}, then run the same pcomp prepare command again to rewrite it")


class RecordTokens:
    """A read-only int32 token sequence over fixed-length ArrayRecord records, read on demand.

    Records `process_index::process_count` of the split (records of `rec_len` tokens; a shard's last
    record holds only its remaining tokens) in order. Supports `len()` and `[a:b]` slices; only the
    records a slice touches are read. Memory: one entry per shard (for the shorter last records)."""

    def __init__(self, source, rec_len: int, shards: list[tuple[int, int]], process_index: int, process_count: int):
        if not 0 <= process_index < process_count:
            raise DataError(f"process index {process_index} is not in [0, {process_count})")
        self._src, self._rec_len, self._p, self._n_proc = source, rec_len, process_index, process_count
        n_records = sum(n for _, n in shards)
        self.n_records = len(range(process_index, n_records, process_count))  # this process's records
        short_idx, deficit, first = [], [], 0
        for n_tokens, n_rec in shards:  # a shard's last record is short unless the shard fills it
            last = first + n_rec - 1
            missing = n_rec * rec_len - n_tokens
            if n_rec and missing and last % process_count == process_index:
                short_idx.append((last - process_index) // process_count)
                deficit.append(missing)
            first += n_rec
        self._short = np.asarray(short_idx, np.int64)  # local indices of short records, increasing
        self._short_len = rec_len - np.asarray(deficit, np.int64)
        self._cum = np.concatenate([[0], np.cumsum(deficit, dtype=np.int64)])  # tokens missing before each
        self._ends = (self._short + 1) * rec_len - self._cum[1:]  # end offset of each short record
        self._len = self.n_records * rec_len - int(self._cum[-1])

    def __len__(self) -> int:
        return self._len

    def _locate(self, t: int) -> tuple[int, int, int]:
        """(local record, offset in it, its length) of token offset `t`."""
        m = int(np.searchsorted(self._ends, t, side="right"))
        k = (t + int(self._cum[m])) // self._rec_len
        within = t - (k * self._rec_len - int(self._cum[m]))
        length = int(self._short_len[m]) if m < len(self._short) and k == self._short[m] else self._rec_len
        return k, within, length

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("RecordTokens supports slices only")
        a, b, step = index.indices(self._len)
        if step != 1:
            raise TypeError("RecordTokens supports contiguous slices only")
        parts, t = [], a
        while t < b:
            k, within, length = self._locate(t)
            rec = np.frombuffer(self._src[self._p + k * self._n_proc], np.uint16)
            piece = rec[within : min(length, within + b - t)]
            parts.append(piece)
            t += len(piece)
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
