"""Tokenizers: bytes <-> int32 ids, with exact round trips, saved as a directory.

Every tokenizer maps raw bytes to ids and back with `decode(encode(x)) == x`
(for SentencePiece: for any valid UTF-8 `x`), so that losses in bits per byte are
comparable across tokenizers. A saved tokenizer is a directory holding
`tokenizer.json` (the `to_config()` dict, with a "kind", and the defining "module")
plus any model files; `load_tokenizer` dispatches on "kind" through a registry that
other modules extend with `@register_tokenizer("kind")`. Kinds defined in higher
layers (the compressed-text tokenizers of `pcomp.compress`) are found without this
module naming them: through the `pcomp.tokenizers` entry-point group (setup.cfg),
else by importing the pcomp module recorded in tokenizer.json.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import io
import json
import os
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from pcomp.errors import ConfigError, DataError

CONFIG_FILENAME = "tokenizer.json"
ENTRY_POINT_GROUP = "pcomp.tokenizers"  # name = kind, value = module:Class of a Tokenizer

_T = TypeVar("_T", bound=type)
_REGISTRY: dict[str, type] = {}  # kind -> class with classmethod from_config(config, directory)


def register_tokenizer(kind: str) -> Callable[[_T], _T]:
    """Class decorator: `load_tokenizer` builds `kind` with `cls.from_config(config, directory)`."""

    def decorator(cls: _T) -> _T:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ValueError(f"tokenizer kind {kind!r} is already registered to {_REGISTRY[kind].__name__}")
        _REGISTRY[kind] = cls
        return cls

    return decorator


def registered_kinds() -> tuple[str, ...]:
    """Kinds `load_tokenizer` can restore, sorted."""
    return tuple(sorted(_REGISTRY))


class Tokenizer(abc.ABC):
    """Bytes -> int32 ids in [0, vocab_size) and back; BOS/EOS are never added by encode."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    @abc.abstractmethod
    def encode(self, data: bytes) -> np.ndarray:
        """int32 ids of `data`, shape [num_tokens]; no BOS/EOS added."""

    @abc.abstractmethod
    def decode(self, ids) -> bytes:
        """Bytes of `ids` (any int sequence/array); BOS/EOS ids are skipped. Inverse of encode."""

    def encode_batch(self, docs) -> list[np.ndarray]:
        """encode() of each document; tokenizers that batch across documents (M1-driven) override it."""
        return [self.encode(d) for d in docs]

    @abc.abstractmethod
    def to_config(self) -> dict:
        """JSON-able description, including "kind"; with the saved files it rebuilds self."""

    def save(self, directory) -> None:
        """Writes directory/tokenizer.json plus any model files (creating the directory)."""
        os.makedirs(directory, exist_ok=True)
        self._save_files(directory)
        path = os.path.join(directory, CONFIG_FILENAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**self.to_config(), "module": type(self).__module__}, f, indent=2, sort_keys=True)
            f.write("\n")

    def _save_files(self, directory) -> None:
        """Hook for subclasses with model files; called by save before tokenizer.json."""

    # --- generation: what differs between kinds (how a prompt begins a document, how ids decode)
    def prompt_ids(self, prompt: bytes) -> np.ndarray:
        """int32 ids that begin a document with `prompt`: BOS (when there is one), then its tokens."""
        ids = np.asarray(self.encode(prompt), np.int32)
        return ids if self.bos_id is None else np.concatenate([[self.bos_id], ids]).astype(np.int32)

    def token_decoder(self, on_warning: Callable[[str], None] | None = None) -> "TokenDecoder | None":
        """An incremental decoder of sampled ids (`TokenDecoder`); what is not text goes to
        `on_warning`. None (this default) when a prefix of the ids may decode otherwise than the whole
        (SentencePiece): the sampled ids are then decoded once, at the end."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"encode expects bytes, got {type(data).__name__}; encode str with .encode('utf-8') first")


def _as_ids(ids) -> np.ndarray:
    ids_i64 = np.asarray(ids)
    if ids_i64.size == 0:
        return np.zeros((0,), np.int64)
    if not np.issubdtype(ids_i64.dtype, np.integer):
        raise TypeError(f"decode expects integer ids, got dtype {ids_i64.dtype}")
    return ids_i64.astype(np.int64).reshape(-1)


def _check_range(ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0]
        raise ValueError(f"token id {int(bad)} is outside [0, {vocab_size})")


@register_tokenizer("bytes")
class ByteTokenizer(Tokenizer):
    """Ids 0..255 are the raw bytes; with specials, BOS=256 and EOS=257 (vocab 258).

    Round-trips ANY bytes, including invalid UTF-8.
    """

    name = "bytes"

    def __init__(self, specials: bool = True):
        self.specials = bool(specials)
        self.vocab_size = 258 if self.specials else 256
        self.bos_id = 256 if self.specials else None
        self.eos_id = 257 if self.specials else None

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(_as_bytes(data), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> bytes:
        ids_i64 = _as_ids(ids)
        _check_range(ids_i64, self.vocab_size)
        if self.specials:
            ids_i64 = ids_i64[ids_i64 < 256]
        return ids_i64.astype(np.uint8).tobytes()

    def token_decoder(self, on_warning=None) -> "_PerIdDecoder":
        """Every id decodes alone (`decode([id])`; BOS/EOS to nothing)."""
        return _PerIdDecoder(self)

    def to_config(self) -> dict:
        return {"kind": "bytes", "specials": self.specials}

    @classmethod
    def from_config(cls, config: dict, directory=None) -> "ByteTokenizer":
        return cls(specials=config.get("specials", True))


class TokenDecoder(abc.ABC):
    """What `Tokenizer.token_decoder` returns: sampled ids in, the bytes they determine out."""

    done = False  # the document has ended: nothing more decodes
    tokens_per_unit = 1  # ids that decode together (an Equal-Info window's b / N)

    @abc.abstractmethod
    def feed(self, token: int) -> bytes:
        """The bytes that this id, with those before it, newly determines."""

    def prompt(self, ids) -> bytes:
        """Feed a prompt's ids (`Tokenizer.prompt_ids`); returns what they decode to."""
        return b"".join(self.feed(t) for t in ids)


class _PerIdDecoder(TokenDecoder):
    """`Tokenizer.token_decoder` of a tokenizer whose ids decode one at a time."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def feed(self, token: int) -> bytes:
        return self.tok.decode([token])


# ---------------------------------------------------------------------------
# SentencePiece

_SP_MODEL_FILENAME = "sp.model"
_SP_MAX_SENTENCE_BYTES = 4192  # sentencepiece's default max_sentence_length
_SP_BYTE_FALLBACK_PIECES = 256  # <0x00>..<0xFF>
_SP_SPECIAL_PIECES = 3  # <unk>, <s>, </s>
# U+2581 is sentencepiece's internal space symbol: a literal one in the text would
# decode as " ". We encode it ourselves as its three byte-fallback pieces instead.
_SP_SPACE_SYMBOL = "\u2581"
_SP_SPACE_SYMBOL_UTF8 = _SP_SPACE_SYMBOL.encode("utf-8")


def _decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} is not valid UTF-8 at byte offset {e.start} ({e.reason}); "
            "the sentencepiece tokenizer only takes UTF-8 text (use the 'bytes' tokenizer for arbitrary bytes)"
        ) from None


def _training_sentences(docs: Iterable[bytes], max_bytes: int, indices: Iterable[int] | None = None) -> Iterator[str]:
    """Docs cut into <= max_bytes UTF-8 pieces (at newlines, else at char boundaries); training only.
    `indices` name the documents in errors (default: their positions)."""
    for index, doc in zip(range(10**18) if indices is None else indices, docs):
        text = _decode_utf8(_as_bytes(doc), f"training document {index}")
        chunk: list[str] = []
        chunk_bytes = 0
        for line in text.splitlines(keepends=True):
            line_utf8 = line.encode("utf-8")
            if chunk and chunk_bytes + len(line_utf8) > max_bytes:
                yield "".join(chunk)
                chunk, chunk_bytes = [], 0
            while len(line_utf8) > max_bytes:  # one overlong line: hard cut at a char boundary
                cut = max_bytes
                while line_utf8[cut] & 0xC0 == 0x80:  # continuation byte
                    cut -= 1
                yield line_utf8[:cut].decode("utf-8")
                line_utf8 = line_utf8[cut:]
            if line_utf8:
                chunk.append(line_utf8.decode("utf-8"))
                chunk_bytes += len(line_utf8)
        if chunk:
            yield "".join(chunk)


def _sample_key(seed: int, index: int) -> int:
    """A fixed pseudo-random 64-bit key of document `index` (splitmix64 of seed and index)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def sample_training_documents(docs: Iterable[bytes], max_bytes: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """A deterministic sample of at most `max_bytes` of `docs`, drawn from across the corpus as it is
    read, as (document index, text) in corpus order.

    Documents are taken in a fixed pseudo-random order until `max_bytes` is reached; the document that
    crosses the budget contributes evenly spaced groups of its lines up to it. A random-access
    sequence (len + indexing, e.g. a TFDS source) is visited in grain's index-shuffle order and only
    the documents taken are read (about `max_bytes`); any other iterable is read once, keeping the
    documents with the smallest keys (`_sample_key`) in memory (at most `max_bytes` plus one document).
    When the corpus fits, every document is taken whole, in order."""
    if max_bytes <= 0:
        raise ConfigError(f"max_train_bytes={max_bytes} must be > 0")
    if hasattr(docs, "__len__") and hasattr(docs, "__getitem__"):
        import grain

        order = grain.MapDataset.range(len(docs)).shuffle(seed=seed)
        taken, total = [], 0
        for pos in range(len(docs)):
            i = int(order[pos])
            doc = _as_bytes(docs[i])
            taken.append((i, doc))
            total += len(doc)
            if total >= max_bytes:
                break
    else:
        import heapq

        heap: list[tuple[int, int, bytes]] = []  # (-key, index, doc): the largest key on top
        total = 0
        for i, doc in enumerate(docs):
            doc = _as_bytes(doc)
            heapq.heappush(heap, (-_sample_key(seed, i), i, doc))
            total += len(doc)
            while len(heap) > 1 and total - len(heap[0][2]) >= max_bytes:  # the rest still reach the budget
                total -= len(heapq.heappop(heap)[2])
        taken = [(i, doc) for _, i, doc in sorted(heap, reverse=True)]  # key order: the crossing one last
    if total > max_bytes:  # the last document taken crosses the budget: evenly spaced lines of it
        i, doc = taken[-1]
        room = max_bytes - (total - len(doc))
        piece_bytes = max(64, min(_SP_MAX_SENTENCE_BYTES, room // 64))  # >= 64 pieces fill the room
        pieces = [p.encode("utf-8") for p in _training_sentences([doc], piece_bytes, [i])]
        keep = max(1, len(pieces) * room // len(doc))
        kept, used = [], 0
        for j in range(keep):  # the middle piece of each of `keep` equal parts
            piece = pieces[(2 * j + 1) * len(pieces) // (2 * keep)]
            if used + len(piece) <= room:
                kept.append(piece)
                used += len(piece)
        taken[-1] = (i, b"".join(kept))
    return sorted((i, doc) for i, doc in taken if doc)


@register_tokenizer("sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model configured for exact round trips of any UTF-8 text.

    Identity normalisation, no dummy prefix, whitespace kept as is, byte fallback
    for anything outside the vocabulary. Ids: unk=0, BOS=1, EOS=2, then the 256
    byte pieces, then learned pieces. Input must be valid UTF-8 (else DataError).
    """

    name = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        self.unk_id = self._sp.unk_id()
        self._space_symbol_ids = np.array(
            [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE_SYMBOL_UTF8], np.int32
        )
        if self.unk_id in self._space_symbol_ids:
            raise DataError("sentencepiece model has no byte-fallback pieces; train it with byte_fallback=True")

    @classmethod
    def train(
        cls,
        docs: Iterable[bytes],
        vocab_size: int,
        model_type: str = "bpe",
        *,
        max_train_bytes: int = 16 << 20,
        num_threads: int = 4,
    ) -> "SentencePieceTokenizer":
        """Trains in memory on `docs` (UTF-8 bytes). Deterministic: same docs -> same model bytes.

        `vocab_size` counts the 3 specials and 256 byte pieces, so it must exceed 259.
        If the corpus has fewer distinct pieces, the vocabulary is smaller
        (hard_vocab_limit=False). At most `max_train_bytes` of text is read and used: a
        deterministic sample drawn from across the corpus as it streams
        (`sample_training_documents`); a corpus that fits is used whole.
        """
        import sentencepiece as spm

        min_vocab = _SP_SPECIAL_PIECES + _SP_BYTE_FALLBACK_PIECES + 1
        if vocab_size < min_vocab:
            raise ConfigError(
                f"sentencepiece vocab_size={vocab_size} is too small: it must be >= {min_vocab} "
                f"({_SP_SPECIAL_PIECES} specials + {_SP_BYTE_FALLBACK_PIECES} byte pieces + learned pieces)"
            )
        if model_type not in ("bpe", "unigram"):
            raise ConfigError(f"sentencepiece model_type={model_type!r}; expected 'bpe' or 'unigram'")
        # our own deterministic sample (sentencepiece's input_sentence_size sampling is seeded by time)
        sample = sample_training_documents(docs, max_train_bytes)
        sentences = [s for s in _training_sentences([d for _, d in sample], _SP_MAX_SENTENCE_BYTES,
                                                    [i for i, _ in sample]) if s]
        if not sentences:
            raise DataError("cannot train a sentencepiece tokenizer: the training documents are empty")
        model_writer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model_writer,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_by_whitespace=True,
            allow_whitespace_only_pieces=True,
            split_digits=False,
            max_sentence_length=_SP_MAX_SENTENCE_BYTES,
            input_sentence_size=0,  # use every sentence we pass: no random sampling
            shuffle_input_sentence=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=num_threads,
            minloglevel=2,
        )
        return cls(model_writer.getvalue())

    def encode(self, data: bytes) -> np.ndarray:
        text = _decode_utf8(_as_bytes(data), "input to the sentencepiece tokenizer")
        if _SP_SPACE_SYMBOL not in text:
            return np.asarray(self._sp.encode(text), dtype=np.int32)
        segments = text.split(_SP_SPACE_SYMBOL)
        parts: list[np.ndarray] = []
        for i, ids in enumerate(self._sp.encode(segments)):
            if i:
                parts.append(self._space_symbol_ids)
            parts.append(np.asarray(ids, dtype=np.int32))
        return np.concatenate(parts)

    def decode(self, ids) -> bytes:
        ids_i64 = _as_ids(ids)
        _check_range(ids_i64, self.vocab_size)
        return self._sp.decode(ids_i64.tolist()).encode("utf-8")

    def to_config(self) -> dict:
        return {
            "kind": "sentencepiece",
            "model_file": _SP_MODEL_FILENAME,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    def _save_files(self, directory) -> None:
        with open(os.path.join(directory, _SP_MODEL_FILENAME), "wb") as f:
            f.write(self.model_proto)

    @classmethod
    def from_config(cls, config: dict, directory) -> "SentencePieceTokenizer":
        path = os.path.join(directory, config.get("model_file", _SP_MODEL_FILENAME))
        try:
            with open(path, "rb") as f:
                model_proto = f.read()
        except FileNotFoundError:
            raise DataError(f"sentencepiece model file {path} is missing (expected beside {CONFIG_FILENAME})") from None
        try:
            tokenizer = cls(model_proto)
        except RuntimeError as e:
            raise DataError(f"{path} is not a valid sentencepiece model: {e}") from None
        if "vocab_size" in config and config["vocab_size"] != tokenizer.vocab_size:
            raise DataError(
                f"{path} has vocab size {tokenizer.vocab_size} but {CONFIG_FILENAME} says {config['vocab_size']}"
            )
        return tokenizer


# ---------------------------------------------------------------------------
# Loading and building


def load_tokenizer(directory) -> Tokenizer:
    """Restores a tokenizer saved with `Tokenizer.save(directory)`."""
    path = os.path.join(directory, CONFIG_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise DataError(f"no tokenizer at {directory}: expected a file {path} written by Tokenizer.save") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _REGISTRY and isinstance(kind, str):
        _register_plugin(kind, config.get("module"), path)
    if kind not in _REGISTRY:
        raise DataError(f"{path} has tokenizer kind {kind!r}; known kinds: {', '.join(registered_kinds())}")
    return _REGISTRY[kind].from_config(config, directory)


def _register_plugin(kind: str, module, path) -> None:
    """Registers `kind` from the `pcomp.tokenizers` entry points, else by importing `module` (a pcomp
    module recorded in tokenizer.json: importing it runs its @register_tokenizer decorators)."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=kind):
        try:
            cls = entry.load()
        except ImportError as e:
            raise DataError(f"{path}: cannot load tokenizer kind {kind!r} from {entry.value}: {e}") from None
        if kind not in _REGISTRY:
            register_tokenizer(kind)(cls)
        return
    if isinstance(module, str) and (module == "pcomp" or module.startswith("pcomp.")):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise DataError(f"{path}: cannot import {module} for tokenizer kind {kind!r}: {e}") from None


BUILD_KINDS = ("bytes", "sentencepiece")


def build_tokenizer(kind: str, train_docs: Iterable[bytes] | None = None, *, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer by kind: "bytes", "sentencepiece" (trained on `train_docs`), or a saved directory.

    `vocab_size` is required for "sentencepiece" and ignored otherwise.
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "sentencepiece":
        if train_docs is None or vocab_size is None:
            raise ConfigError("the sentencepiece tokenizer needs train_docs and vocab_size to train on")
        return SentencePieceTokenizer.train(train_docs, vocab_size)
    if os.path.isdir(kind):
        return load_tokenizer(kind)
    if os.sep in kind or (os.altsep and os.altsep in kind):
        raise DataError(f"tokenizer directory {kind} does not exist (expected a directory with {CONFIG_FILENAME})")
    raise ConfigError(
        f"unknown tokenizer {kind!r}; expected one of {', '.join(repr(k) for k in BUILD_KINDS)} "
        "or a directory holding a saved tokenizer"
    )
