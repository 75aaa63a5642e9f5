"""Read a dataset written by `pcomp prepare` (ArrayRecord records of M2 tokens) through grain.

`dataset.json` describes it, including the vocabulary size and where its tokenizer is saved, so a
trainer sizes M2 from the metadata alone, without loading the tokenizer (or M1, numba, ...).
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
