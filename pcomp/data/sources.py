"""Document sources: the embedded corpus, local files/directories/JSONL, and TFDS.

`load_documents(source, split)` returns a random-access sequence of documents
(UTF-8 bytes). Local sources are split into train/eval by bytes (the last
`eval_fraction` of the text, cut at a line boundary) so no text is in both splits.
A directory or a plain .jsonl file is read lazily (`LocalDocuments`): opening it
learns only each document's place and length (file sizes; for JSONL one parsing
pass that keeps no text), and a document's text is read when it is accessed, so a
process that tokenizes documents `p::P` of a split reads only those (plus the
one document the held-out cut falls in). The embedded corpus, a single text file
and a .jsonl.gz file (gzip has no random access) are held in memory. TFDS sources
are read lazily through `tfds.data_source` (ArrayRecord; no TensorFlow needed)
from already prepared data.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import weakref
from typing import Callable, Sequence

import numpy as np

from pcomp.errors import ConfigError, DataError

EMBEDDED = "embedded"
TFDS_PREFIX = "tfds:"
SPLITS = ("train", "eval")


def load_documents(
    source: str,
    split: str,
    *,
    eval_fraction: float = 0.1,
    text_field: str = "text",
    data_dir: str | None = None,
) -> Sequence[bytes]:
    """Documents of `split` ("train" or "eval") from `source`, as UTF-8 bytes.

    source: "embedded"; a text file (one document); a directory (each non-hidden
    regular file below it, sorted by relative path, is one document); a .jsonl or
    .jsonl.gz file (one document per line, from field `text_field`); or
    "tfds:NAME[/CONFIG][:VERSION]" (prepared in `data_dir`; eval reads the
    "validation" split, else "test"). `eval_fraction` applies to local sources only;
    `data_dir` to TFDS only. Empty documents are dropped from local sources.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not source:  # "" would otherwise read the current directory
        raise ConfigError(
            f"the data source is empty; expected {EMBEDDED!r}, a file or directory path or {TFDS_PREFIX}NAME"
        )
    if source.startswith(TFDS_PREFIX):
        return _tfds_documents(source[len(TFDS_PREFIX):], split, text_field=text_field, data_dir=data_dir)
    if not (isinstance(eval_fraction, (int, float)) and 0.0 <= eval_fraction < 1.0):
        raise ConfigError(f"eval_fraction={eval_fraction!r} must be in [0, 1)")
    train_docs, eval_docs = _split_local(_local_key(source), text_field, float(eval_fraction))
    if eval_fraction > 0 and not (train_docs and eval_docs):
        n_train, n_eval = train_docs.num_bytes, eval_docs.num_bytes
        raise DataError(
            f"data source {source} ({n_train + n_eval} bytes) is too small to hold out "
            f"eval_fraction={eval_fraction}: that leaves {n_train} bytes to train on and {n_eval} held out; "
            "expected both non-empty: use more data or another data.eval_fraction"
        )
    return train_docs if split == "train" else eval_docs


def whole_documents(source: str, *, text_field: str = "text") -> Sequence[bytes]:
    """Every document of a local source with no held-out cut (`load_documents` with eval_fraction 0):
    for text scored or prepared as a whole, e.g. a file the model never saw, where a train/eval cut
    would drop part of it. TFDS sources have only their own splits."""
    if source.startswith(TFDS_PREFIX):
        raise ConfigError(f"{source} has no whole: a TFDS dataset is read by split (train or eval)")
    return load_documents(source, "train", eval_fraction=0.0, text_field=text_field)


def describe_source(source: str, *, text_field: str = "text", data_dir: str | None = None) -> str:
    """One line for logs, e.g. "embedded corpus: 140 docs, 1.0 MB"."""
    if source.startswith(TFDS_PREFIX):
        name = source[len(TFDS_PREFIX):]
        builder = _tfds_builder(name, data_dir)
        counts = ", ".join(f"{split} {info.num_examples} docs" for split, info in sorted(builder.info.splits.items()))
        return f"TFDS {name} (field {text_field!r}) in {builder.data_dir}: {counts}"
    docs = _load_local(_local_key(source), text_field)
    num_bytes = docs.num_bytes
    what = "embedded corpus" if source == EMBEDDED else source
    return f"{what}: {len(docs)} docs, {num_bytes / 1e6:.1f} MB"


def check_source(source: str) -> None:
    """The checks that need no reading, so a mistyped or empty source is reported before a run spends
    its compile time: a local path exists, a directory holds files, a plain text file (or a
    directory's files) is not empty. TFDS names and JSONL fields are checked when read."""
    if source.startswith(TFDS_PREFIX) or source == EMBEDDED:
        return
    key = _local_key(source)
    if os.path.isdir(key):
        if not any(os.path.getsize(path) for path in _directory_files(key)):
            raise DataError(f"data directory {key} holds only empty files; expected text")
    elif os.path.getsize(key) == 0:
        raise DataError(f"data file {key} is empty; expected text")


def same_source(a: str, b: str) -> bool:
    """Whether two source strings name the same data: equal names, or local paths that resolve to the
    same file or directory (so `pcomp eval --data` given a run's own source in another spelling still
    gets that run's train/eval cut)."""
    if a == b:
        return True
    if any(s == EMBEDDED or s.startswith(TFDS_PREFIX) or not s for s in (a, b)):
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def directory_documents(source: str) -> list[str] | None:
    """The paths of a directory source's documents in `load_documents` order (its non-empty files,
    as the loader keeps them), so a caller can name each document; None for any other source."""
    if source == EMBEDDED or source.startswith(TFDS_PREFIX):
        return None
    key = _local_key(source)
    if not os.path.isdir(key):
        return None
    return [path for path in _directory_files(key) if os.path.getsize(path)]


# ---------------------------------------------------------------------------
# Local sources


def _local_key(source: str) -> str:
    """Cache key: "embedded" or an absolute path (so the same file is loaded once)."""
    if source == EMBEDDED:
        return EMBEDDED
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(path):
        raise DataError(
            f"data source {source} does not exist; expected {EMBEDDED!r}, a text file, a directory, "
            f"a .jsonl/.jsonl.gz file or {TFDS_PREFIX}NAME"
        )
    return path


class LocalDocuments(Sequence[bytes]):
    """Lazy random access to a local source's documents, or to a byte range of them.

    `read(i)` returns document i whole; `doc_bytes[i]` is its length. A view (a split, or a slice
    such as `docs[p::P]`) is three arrays: which document, and the byte range of it that the view
    holds, so slicing reads nothing and a view's text is read only when accessed."""

    def __init__(self, read: Callable[[int], bytes], doc_bytes: np.ndarray, index: np.ndarray | None = None,
                 lo: np.ndarray | None = None, hi: np.ndarray | None = None):
        self._read, self.doc_bytes = read, np.asarray(doc_bytes, np.int64)
        self._index = np.arange(len(self.doc_bytes)) if index is None else np.asarray(index, np.int64)
        self._lo = np.zeros(len(self._index), np.int64) if lo is None else np.asarray(lo, np.int64)
        self._hi = self.doc_bytes[self._index] if hi is None else np.asarray(hi, np.int64)

    def view(self, index, lo, hi) -> "LocalDocuments":
        """Byte ranges [lo, hi) of documents `index` of the underlying source."""
        return LocalDocuments(self._read, self.doc_bytes, index, lo, hi)

    def split(self, eval_fraction: float) -> tuple["LocalDocuments", "LocalDocuments"]:
        """`split_documents` as two views (train, eval), reading only the document the cut falls in."""
        lengths = self.lengths()
        ends = np.cumsum(lengths)
        total_bytes = int(ends[-1]) if len(ends) else 0
        cut = total_bytes - round(total_bytes * eval_fraction)
        index = int(np.searchsorted(ends, cut, side="right"))  # the first document that ends after the cut
        if index == len(self):
            return self, self[len(self):]
        start, size = int(ends[index] - lengths[index]), int(lengths[index])
        local_cut = cut - start
        if local_cut > 0:
            doc = self[index]
            if doc[local_cut - 1:local_cut] != b"\n":
                newline = doc.find(b"\n", local_cut)
                # A newline that would leave eval empty (the last byte of the
                # last document) counts as none: cut exactly instead.
                if newline != -1 and (newline + 1 < size or start + size < total_bytes):
                    local_cut = newline + 1
        i, lo, hi = self._index, self._lo, self._hi
        head = [index] if local_cut > 0 else []  # the cut document's part before / after the cut
        tail = [index] if local_cut < size else []
        train = self.view(np.r_[i[:index], i[head]], np.r_[lo[:index], lo[head]], np.r_[hi[:index], lo[head] + local_cut])
        eval_ = self.view(np.r_[i[tail], i[index + 1:]], np.r_[lo[tail] + local_cut, lo[index + 1:]],
                          np.r_[hi[tail], hi[index + 1:]])
        return train, eval_

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_bytes(self) -> int:
        """Total bytes of the view, known without reading any text."""
        return int(np.sum(self._hi - self._lo))

    def lengths(self) -> np.ndarray:
        """Each document's length in bytes (no text read)."""
        return self._hi - self._lo

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.view(self._index[k], self._lo[k], self._hi[k])
        if not -len(self) <= k < len(self):
            raise IndexError(f"document index {k} out of range for {len(self)} documents")
        i, lo, hi = int(self._index[k]), int(self._lo[k]), int(self._hi[k])
        doc = self._read(i)
        if len(doc) != self.doc_bytes[i]:
            raise DataError(f"document {i} of a local data source changed after it was opened "
                            f"({self.doc_bytes[i]} bytes then, {len(doc)} now); expected the text to stay as it was")
        return doc if (lo, hi) == (0, len(doc)) else doc[lo:hi]


@functools.lru_cache(maxsize=8)
def _load_local(key: str, text_field: str) -> LocalDocuments:
    """All non-empty documents of a local source, in order (see `LocalDocuments`)."""
    if key == EMBEDDED:
        from pcomp.data.embedded import embedded_documents

        docs = _in_memory(embedded_documents())
    elif os.path.isdir(key):
        paths = _directory_files(key)
        sizes = np.array([os.path.getsize(path) for path in paths], np.int64)
        kept = [path for path, size in zip(paths, sizes) if size]
        docs = LocalDocuments(lambda i: _read_file(kept[i]), sizes[sizes > 0])
    elif key.endswith(".jsonl"):
        docs = _jsonl_documents(key, text_field)
    elif key.endswith(".jsonl.gz"):
        docs = _in_memory(_read_jsonl(key, text_field))
    else:
        docs = _in_memory((_read_file(key),))
    if not len(docs):
        if os.path.isdir(key):
            raise DataError(f"data directory {key} holds only empty files; expected text")
        if key.endswith((".jsonl", ".jsonl.gz")):
            raise DataError(f"data file {key} has no non-empty {text_field!r} field; expected JSON lines with text")
        raise DataError(f"data file {key} is empty; expected text")
    return docs


def _in_memory(docs: Sequence[bytes]) -> LocalDocuments:
    kept = tuple(doc for doc in docs if doc)
    return LocalDocuments(kept.__getitem__, np.array([len(d) for d in kept], np.int64))


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None


def _directory_files(root: str) -> list[str]:
    """Non-hidden regular files below root (hidden directories skipped), sorted by relative path."""
    rel_paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            if not filename.startswith(".") and os.path.isfile(path):
                rel_paths.append(os.path.relpath(path, root).replace(os.sep, "/"))
    if not rel_paths:
        raise DataError(f"data directory {root} has no (non-hidden) files; expected one text file per document")
    return [os.path.join(root, *rel.split("/")) for rel in sorted(rel_paths)]


def _jsonl_text(path: str, line_number: int, line: bytes, text_field: str) -> bytes | None:
    """The UTF-8 text of one JSONL line (None for a blank line), or a DataError naming the line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} line {line_number}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or text_field not in record:
        raise DataError(
            f"{path} line {line_number}: no field {text_field!r}; expected a JSON object "
            f"with a string field {text_field!r} (set text_field to choose another)"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{path} line {line_number}: field {text_field!r} is a {type(text).__name__}, expected a string")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # an unpaired surrogate escape such as "\ud800"
        raise DataError(
            f"{path} line {line_number}: field {text_field!r} is not valid Unicode "
            f"(unpaired surrogate at character {e.start})"
        ) from None


def _read_jsonl(path: str, text_field: str) -> tuple[bytes, ...]:
    """One document per non-blank line, from the string field `text_field` (held in memory)."""
    opener = gzip.open if path.endswith(".gz") else open
    docs: list[bytes] = []
    try:
        with opener(path, "rb") as f:
            for line_number, line in enumerate(f, start=1):
                text = _jsonl_text(path, line_number, line, text_field)
                if text is not None:
                    docs.append(text)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return tuple(docs)


def _jsonl_documents(path: str, text_field: str) -> LocalDocuments:
    """A plain JSONL file, lazily: one pass parses every line (so a bad line fails here, naming it)
    and keeps only where each non-empty document's line is and its text's length; a document is
    re-read from its line when accessed."""
    offsets, line_bytes, numbers, doc_bytes = [], [], [], []
    try:
        with open(path, "rb") as f:
            offset = 0
            for line_number, line in enumerate(f, start=1):
                text = _jsonl_text(path, line_number, line, text_field)
                if text:
                    offsets.append(offset)
                    line_bytes.append(len(line))
                    numbers.append(line_number)
                    doc_bytes.append(len(text))
                offset += len(line)
        reader = _PositionalReader(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    offsets, line_bytes, numbers = (np.array(x, np.int64) for x in (offsets, line_bytes, numbers))

    def read(i: int) -> bytes:
        line = reader.read(int(offsets[i]), int(line_bytes[i]))
        return _jsonl_text(path, int(numbers[i]), line, text_field) or b""

    return LocalDocuments(read, np.array(doc_bytes, np.int64))


class _PositionalReader:
    """Reads byte ranges of one file through one descriptor kept open, with `os.pread`: no open per
    document (costly on network file systems such as gcsfuse), and no shared file position, so
    grain's reader threads (and a forked child, which inherits the descriptor) may read at once."""

    def __init__(self, path: str):
        self.path, self._fd = path, os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def read(self, offset: int, size: int) -> bytes:
        parts = []
        try:
            while size:
                part = os.pread(self._fd, size, offset)
                if not part:
                    break  # the file is shorter than when it was indexed: the caller's length check says so
                parts.append(part)
                offset, size = offset + len(part), size - len(part)
        except OSError as e:
            raise DataError(f"cannot read {self.path}: {e.strerror or e}") from None
        return b"".join(parts)


def split_documents(
    docs: Sequence[bytes], eval_fraction: float
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(train, eval): eval is the last `eval_fraction` of all bytes, cut at a line start.

    The document holding the cut point is split just after the first b"\\n" at or
    after the cut (exactly at the cut if there is none); whole documents after it
    go to eval. A cut that already falls at a line start is kept; a newline that
    would leave eval empty is ignored. Concatenating
    train then eval gives back the documents' bytes; empty documents are dropped.
    """
    train, eval_ = _in_memory(docs).split(eval_fraction)
    return tuple(train), tuple(eval_)


@functools.lru_cache(maxsize=8)
def _split_local(key: str, text_field: str, eval_fraction: float) -> tuple[LocalDocuments, LocalDocuments]:
    return _load_local(key, text_field).split(eval_fraction)


# ---------------------------------------------------------------------------
# TFDS


class TfdsDocuments(Sequence[bytes]):
    """Lazy random access to one text feature of a TFDS data source, as bytes."""

    def __init__(self, data_source, text_field: str, description: str):
        self._data_source = data_source
        self._text_field = text_field
        self._description = description

    def __len__(self) -> int:
        return len(self._data_source)

    def _text(self, record) -> bytes:
        text = record[self._text_field]
        if isinstance(text, bytes):
            return text
        if isinstance(text, str):
            return text.encode("utf-8")
        if hasattr(text, "item"):  # a 0-d numpy array
            return self._text({self._text_field: text.item()})
        raise DataError(f"{self._description}: field {self._text_field!r} is a {type(text).__name__}, expected text")

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"document index {index} out of range for {size} documents")
        return self._text(self._data_source[index % size])

    def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
        """Batched read (used by grain); one call into the ArrayRecord reader."""
        if hasattr(self._data_source, "__getitems__"):
            return [self._text(record) for record in self._data_source.__getitems__(list(indices))]
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"TfdsDocuments({self._description}, {len(self)} docs)"


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    return (
        f"prepare it on a machine with internet access: `tfds build {name} --data_dir {where} "
        f"--file_format array_record`, then copy {where} here (and pass data_dir)"
    )


def _tfds_builder(name: str, data_dir: str | None):
    """The prepared TFDS builder for `name`, or a DataError saying how to prepare it."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError (a ValueError) and config/version errors
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"TFDS dataset {name!r} not found ({first_line}); {_prepare_hint(name, data_dir)}") from None
    if not builder.is_prepared():
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; {_prepare_hint(name, data_dir)}"
        )
    return builder


def _tfds_documents(name: str, split: str, *, text_field: str, data_dir: str | None) -> TfdsDocuments:
    builder = _tfds_builder(name, data_dir)
    available = list(builder.info.splits.keys())
    if split == "train":
        wanted = ["train"]
    else:
        wanted = ["validation", "test"]
    tfds_split = next((s for s in wanted if s in available), None)
    if tfds_split is None:
        raise DataError(
            f"TFDS dataset {name!r} has splits {available}; the {split} split needs one of {wanted}"
        )
    features = builder.info.features
    if text_field not in features:
        raise DataError(
            f"TFDS dataset {name!r} has no feature {text_field!r}; its features are {sorted(features.keys())} "
            "(set text_field to choose one)"
        )
    try:
        data_source = builder.as_data_source(split=tfds_split)
    except (NotImplementedError, ValueError) as e:
        raise DataError(
            f"TFDS dataset {name!r} in {builder.data_dir} cannot be read with random access ({e}); "
            f"rebuild it with `--file_format array_record`"
        ) from None
    return TfdsDocuments(data_source, text_field, f"tfds:{name} {tfds_split}")
