"""Read a dataset written by `pcomp prepare` (ArrayRecord records of M2 tokens) through grain."""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from pcomp.errors import DataError

DATASET_FILE = "dataset.json"


def is_prepared(source: str) -> bool:
    return (Path(source) / DATASET_FILE).is_file()


class PreparedDataset:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not is_prepared(str(self.path)):
            raise DataError(f"{self.path} is not a prepared dataset (no {DATASET_FILE}; run pcomp prepare)")
        self.params = json.loads((self.path / DATASET_FILE).read_text())
        self.seq_len = self.params["seq_len"]

    def _shards(self, split: str) -> list[tuple[Path, dict]]:
        metas = sorted(self.path.glob(f"{split}-*.json"))
        records = sorted(self.path.glob(f"{split}-*.array_record"))
        if not metas or len(metas) != len(records):
            raise DataError(f"{self.path}: the {split} split is incomplete ({len(metas)} finished shards, "
                            f"{len(records)} record files); run pcomp prepare again to finish it")
        return [(m.with_suffix(".array_record"), json.loads(m.read_text())) for m in metas]

    def records(self, split: str) -> grain.MapDataset:
        """The split's fixed-length records (int32 [seq_len]) as a random-access grain dataset."""
        files = [str(f) for f, _ in self._shards(split)]
        src = grain.sources.ArrayRecordDataSource(files)
        return grain.MapDataset.source(src).map(lambda r: np.frombuffer(r, np.uint16).astype(np.int32))

    def stream(self, split: str) -> tuple[np.ndarray, int]:
        """(all of the split's tokens in order without padding, UTF-8 bytes they encode)."""
        parts, n_bytes = [], 0
        for f, meta in self._shards(split):
            src = grain.sources.ArrayRecordDataSource([str(f)])
            toks = np.frombuffer(b"".join(src[i] for i in range(len(src))), np.uint16).astype(np.int32)
            parts.append(toks[: meta["tokens"]])
            n_bytes += meta["bytes"]
        return np.concatenate(parts), n_bytes
