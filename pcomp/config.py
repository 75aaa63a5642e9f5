"""Frozen dataclass configs, one per concern, and `key=value` overrides (the named presets are in
`pcomp.presets`).

A run is described by one `Config` made of `ModelConfig`, `DataConfig`, `TrainingConfig` and
`MeshConfig`. Start from a preset (`Config.preset("m1-3m")`) or a JSON file written by a
previous run (`runs/x/config.json`), then apply CLI overrides such as `training.lr=1e-3`,
`mesh.fsdp=2` or `model=25m` (swap the whole model preset).

Every value is type-checked against the dataclass field's type by one parser (`parse_value`), for
override strings and JSON values alike, and `Config.validate` checks every range (finite positive
learning rate, betas in [0, 1), mesh axes that divide the model, ...). Bad input of any shape is a
`ConfigError` naming the key, the bad value and what was expected; never another exception.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import json
import math
import numbers
import typing
from pathlib import Path
from typing import Any

from pcomp.errors import ConfigError

ATTENTION_KINDS = ("auto", "blocked", "fused", "splash", "cudnn")  # model.attention (pcomp.models.attention)
SEED_LIMIT = 2**32  # seeds are in [0, SEED_LIMIT): what every RNG (numpy, grain, jax) accepts
# model.remat: none = keep every block's activations for the backward pass (fastest; the default, as
# the CPU-sized presets have memory to spare); full = keep only each block's input and recompute the
# block (least memory, ~1/3 more compute); dots_saveable = keep matmul outputs, recompute the rest.
REMAT_POLICIES = ("none", "full", "dots_saveable")
# model.scan_unroll: the blocks run as one scanned loop; 1 block per iteration keeps the compiled program
# and its compile time independent of depth (what large models and pods want). Unrolling the loop
# (scan_unroll >= n_layers) computes the same step and runs the small presets faster on CPU, where the
# loop's per-iteration slicing of the stacked parameters costs them most (RESULTS.md, "Against
# PyTorch"), so the CPU-sized presets (<= 4 layers) unroll fully and the rest keep 1. Decoding
# (decode_step) always loops.

@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only LLaMA-style transformer."""

    name: str = "custom"
    vocab_size: int = 258  # real vocabulary; the embedding table is padded to a multiple of 128
    d_model: int = 256
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 means n_heads (no grouped-query attention)
    d_ff: int = 1024
    max_seq_len: int = 256  # longest position the model is trained / used at
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    remat: str = "none"  # what the backward pass recomputes per block: none | full | dots_saveable
    scan_unroll: int = 1  # blocks per iteration of the scanned layer loop (>= n_layers: fully unrolled)
    # auto: splash on TPU, cuDNN on GPU (bf16), blocked on CPU (pcomp.models.attention) | blocked | fused (XLA)
    # | splash | cudnn
    attention: str = "auto"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // 128) * 128

    def validate(self) -> None:
        _check_types(self, "model")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "scan_unroll"):
            _at_least(self, "model", key, 1)
        _at_least(self, "model", "n_kv_heads", 0, " (0 = n_heads)")
        for key in ("rope_theta", "norm_eps", "init_std"):
            _finite_positive(self, "model", key)
        # ranges first: a negative d_model is "must be >= 1", not "not divisible"
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16"):
                raise ConfigError(f"model.{key}={getattr(self, key)!r}; expected 'float32' or 'bfloat16'")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={self.remat!r}; expected one of "
                              + ", ".join(repr(p) for p in REMAT_POLICIES))
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"model.attention={self.attention!r}; expected one of "
                              + ", ".join(repr(k) for k in ATTENTION_KINDS))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where text comes from, how it is tokenized and packed."""

    source: str = "embedded"  # embedded | PATH (file, directory, .jsonl) | tfds:NAME[:VERSION]
    tokenizer: str = "bytes"  # bytes | sentencepiece | a directory holding tokenizer.json
    vocab_size: int = 4096  # for tokenizers trained on the fly (sentencepiece)
    text_field: str = "text"  # JSONL / TFDS feature holding the text
    data_dir: str = ""  # TFDS data_dir ("" = TFDS default)
    seq_len: int = 256  # tokens per training sequence (token level); patch level uses K * seq_len
    eval_fraction: float = 0.1  # held-out share of local sources (last bytes)
    eval_max_bytes: int = 0  # evaluate at most this many held-out bytes (0 = all)
    seed: int = 0  # shuffle seed
    bos_first: bool = False  # every training sequence starts with BOS (M1: learns to predict from an empty context)
    read_threads: int = 2  # grain prefetch threads

    def validate(self) -> None:
        _check_types(self, "data")
        for key in ("source", "tokenizer", "text_field"):
            if not getattr(self, key):
                raise ConfigError(f"data.{key} is empty; expected {_DATA_EXPECTED[key]}")
        _at_least(self, "data", "vocab_size", 1)
        _at_least(self, "data", "seq_len", 2)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")
        _at_least(self, "data", "eval_max_bytes", 0, " (0 = all)")
        _seed(self, "data")
        _at_least(self, "data", "read_threads", 0)


_DATA_EXPECTED = {
    "source": "'embedded', a file or directory path, or tfds:NAME",
    "tokenizer": "'bytes', 'sentencepiece' or a directory holding tokenizer.json",
    "text_field": "the name of the JSONL / TFDS field holding the text",
}


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, schedule, patch-level stage, logging and checkpoints."""

    batch_size: int = 16  # global sequences per optimizer step
    grad_accum: int = 1  # micro-batches per step (batch_size must divide evenly)
    steps: int = 1000  # token-level-equivalent steps; the token budget is steps * batch * seq_len
    tokens: int = 0  # token budget D; overrides `steps` when > 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the end of each stage
    warmup_steps: int = 100  # first stage, capped at a fifth of the stage
    # Stage 2 (token level after a patch stage) re-warms for this fraction of its own steps (the paper:
    # 2000 of 45000 steps, 4%); 0 = the old rule, min(warmup_steps, steps // 5), as in stage 1.
    warmup_fraction: float = 0.04
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    z_loss: float = 0.0
    patch_size: int = 1  # K; 1 = ordinary token-level training
    patch_fraction: float = 2 / 3  # lambda: share of the token budget trained at patch level
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end of each stage
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    workdir: str = "runs/default"  # config, tokenizer, metrics, TensorBoard (local)
    checkpoint_dir: str = ""  # "" = WORKDIR/checkpoints; may be gs://... (orbax writes it directly)
    progress: bool = True  # tqdm progress bar on process 0
    profile_steps: str = ""  # "N,M": JAX profiler trace of global steps N..M in WORKDIR/profile; "" = off

    def validate(self) -> None:
        _check_types(self, "training")
        for key in ("batch_size", "grad_accum", "patch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            _at_least(self, "training", key, 1)
        for key in ("steps", "tokens", "warmup_steps", "eval_every"):
            _at_least(self, "training", key, 0)
        _finite_positive(self, "training", "lr")
        _finite_positive(self, "training", "grad_clip")
        for key in ("weight_decay", "z_loss"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"training.{key}={value} must be a finite number >= 0")
        for key in ("min_lr_ratio", "patch_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"training.{key}={getattr(self, key)} must be in [0, 1]")
        for key in ("b1", "b2", "warmup_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"training.{key}={getattr(self, key)} must be in [0, 1)")
        _seed(self, "training")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"training.batch_size={self.batch_size} must be divisible by training.grad_accum={self.grad_accum}"
            )
        if self.steps < 1 and self.tokens < 1:
            raise ConfigError("set training.steps or training.tokens to a positive number")
        if not self.workdir:
            raise ConfigError("training.workdir is empty; expected a directory path for the run")
        self.profile_window()

    def profile_window(self) -> tuple[int, int] | None:
        """`profile_steps` as (first, last) global step, both included; None when profiling is off."""
        if not self.profile_steps:
            return None
        parts = [p.strip() for p in self.profile_steps.split(",")]
        two_ints = len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts)
        if not two_ints or not 1 <= int(parts[0]) <= int(parts[1]):
            raise ConfigError(f"training.profile_steps={self.profile_steps!r} must be \"N,M\" with 1 <= N <= M "
                              "(global steps to trace), or empty for no profile")
        return int(parts[0]), int(parts[1])


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh: data parallel x fully-sharded data parallel x tensor parallel."""

    data: int = -1  # -1 = all devices not used by fsdp and tensor
    fsdp: int = 1
    tensor: int = 1

    def validate(self) -> None:
        _check_types(self, "mesh")
        sizes = dataclasses.asdict(self)
        for key, size in sizes.items():
            if size < 1 and size != -1:
                raise ConfigError(f"mesh.{key}={size} must be >= 1, or -1 for the devices the other axes leave")
        if list(sizes.values()).count(-1) > 1:
            rest = " and ".join(f"mesh.{k}=-1" for k, s in sizes.items() if s == -1)
            raise ConfigError(f"{rest}: at most one mesh axis may be -1 (= the rest of the devices)")


def check_mesh_fits_model(sizes: dict[str, int], model: ModelConfig) -> None:
    """Sharding splits dimensions evenly: `tensor` must divide the attention heads, the KV heads, d_ff
    and the padded vocabulary, and `fsdp` must divide d_model (see pcomp.models.sharding.RULES).
    `sizes` maps mesh axis names to sizes; axes absent or -1 are not checked (`Config.validate`), so
    `make_mesh(..., model=...)` checks again once the device count has resolved every axis."""
    needs = {
        "tensor": [("model.n_heads", model.n_heads), ("model.n_kv_heads", model.kv_heads),
                   ("model.d_ff", model.d_ff), ("the padded vocabulary", model.padded_vocab)],
        "fsdp": [("model.d_model", model.d_model)],
    }
    for axis, dims in needs.items():
        size = sizes.get(axis, 1)
        if size < 1:
            continue
        for name, dim in dims:
            if dim % size:
                raise ConfigError(
                    f"mesh.{axis}={size} does not divide {name}={dim}; mesh.{axis} must divide "
                    + ", ".join(f"{n}={d}" for n, d in dims)
                )


# Unique-decoding rules of Equal-Info windows that this pcomp can write and read (`pcomp.compress.windows`).
WINDOW_RULES = ("unique-prefix-codewords/1",)
TOKEN_BITS = (8, 16)  # N: bits per M2 token
# `pcomp prepare --tokenizer KIND`: the tokenizations of the Equal-Info study (pcomp.compress.prepare)
TOKENIZER_KINDS = ("equal_info", "gzip", "static_ac", "ac", "bytes", "sentencepiece")


def check_token_bits(token_bits: int) -> None:
    """ConfigError unless `token_bits` is one of TOKEN_BITS."""
    if token_bits not in TOKEN_BITS:
        raise ConfigError(f"token bits N={token_bits}: expected {' or '.join(map(str, TOKEN_BITS))}")
MAX_WINDOW_BITS = 64  # codewords are held in 64-bit registers
MIN_PRECISION, MAX_PRECISION = 2, 24  # bits of the coder's frequency total (int32 tables, 64-bit products)


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """Equal-Info compression settings (`pcomp compress`, `pcomp prepare`, the compressed tokenizers).

    Every field a mode uses is recorded in its files' headers: the decoder needs the same values.
    """

    window_bits: int = 16  # b: bits per window
    token_bits: int = 16  # N: bits per M2 token (vocabulary 2**N)
    precision: int = 14  # beta: the coder's frequency tables sum to 2**precision
    m1_batch: int = 256  # M1 rows per step (M1's float results depend on it: recorded)
    segment_bytes: int = 2048  # windows never cross a segment: long documents fill the M1 batch
    window_rule: str = WINDOW_RULES[0]
    # "best" mode: the fraction of M1's context block re-primed when its context restarts (0 = from BOS
    # alone); the file records the resulting bytes (m1_overlap)
    context_overlap: float = 0.25

    def validate(self) -> CompressConfig:
        """Each value in range, naming the setting and what was expected (ConfigError otherwise)."""
        ints = {k: getattr(self, k) for k in ("window_bits", "token_bits", "precision", "m1_batch", "segment_bytes")}
        for key, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{key}={value!r}: expected an integer")
        check_token_bits(self.token_bits)
        if not MIN_PRECISION <= self.precision <= MAX_PRECISION:
            raise ConfigError(f"precision={self.precision}: expected an integer in [{MIN_PRECISION}, {MAX_PRECISION}]")
        b, lo = self.window_bits, self.precision + 2
        if b < 1:
            raise ConfigError(f"window_bits b={b}: expected a multiple of the token bits N={self.token_bits} in "
                              f"[precision + 2 = {lo}, {MAX_WINDOW_BITS}]")
        if b % self.token_bits:
            raise ConfigError(f"window bits b={b} is not a multiple of the token bits N={self.token_bits}")
        if b < lo:
            raise ConfigError(
                f"window bits b={b} cannot hold every byte: a byte of frequency 1 / 2**{self.precision} may need "
                f"{lo} bits; expected b >= precision + 2 = {lo}"
            )
        if b > MAX_WINDOW_BITS:
            raise ConfigError(f"window bits b={b}: expected at most {MAX_WINDOW_BITS}")
        if self.m1_batch < 1:
            raise ConfigError(f"m1_batch={self.m1_batch}: expected >= 1 M1 rows per step")
        if self.segment_bytes < 1:
            raise ConfigError(f"segment_bytes={self.segment_bytes} must be >= 1")
        if isinstance(self.context_overlap, bool) or not isinstance(self.context_overlap, numbers.Real) or not (
                0 <= self.context_overlap < 1):
            raise ConfigError(f"context_overlap={self.context_overlap!r}: expected a fraction of M1's context in [0, 1)")
        if self.window_rule not in WINDOW_RULES:
            raise ConfigError(f"window_rule={self.window_rule!r}; this pcomp codes {', '.join(WINDOW_RULES)}")
        return self

    def override(self, *assignments: str) -> CompressConfig:
        """Apply `key=value` strings, e.g. `window_bits=32` (parsed like `Config.override`)."""
        cfg = self
        for item in assignments:
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            cfg = with_value(cfg, key, value, key, f"unknown compression setting {key!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    mesh: MeshConfig = MeshConfig()

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def preset(name: str) -> Config:
        """A named run preset (`pcomp.presets.RUN_PRESETS`)."""
        from pcomp.presets import RUN_PRESETS

        if name not in RUN_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(RUN_PRESETS)} or a .json file")
        return RUN_PRESETS[name]

    @staticmethod
    def load(preset_or_file: str) -> Config:
        """A preset name, or a JSON file (e.g. a run's config.json)."""
        path = Path(preset_or_file)
        if preset_or_file.endswith(".json") or path.is_file():
            if path.is_dir():
                raise ConfigError(f"config file {preset_or_file!r} is a directory; expected a JSON file")
            if not path.is_file():
                raise ConfigError(f"config file {preset_or_file!r} does not exist")
            try:
                text = path.read_bytes().decode("utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read config file {preset_or_file!r}: {e.strerror or e}") from None
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"config file {preset_or_file!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                    f"offset {e.start}); expected a JSON object such as a run's config.json"
                ) from None
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"config file {preset_or_file!r} is not valid JSON: {e}") from None
            except RecursionError:
                raise ConfigError(f"config file {preset_or_file!r} is nested too deeply to be a config") from None
            return from_dict(raw, origin=f"config file {preset_or_file!r}")
        return Config.preset(preset_or_file)

    def override(self, *assignments: str) -> Config:
        """Apply `section.key=value` strings (or `model=PRESET`, a `pcomp.presets.MODEL_PRESETS` name)."""
        from pcomp.presets import MODEL_PRESETS

        cfg = self
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, value = item.split("=", 1)
            if key == "model":
                if value not in MODEL_PRESETS:
                    raise ConfigError(f"unknown model preset {value!r}; expected one of {sorted(MODEL_PRESETS)}")
                cfg = dataclasses.replace(cfg, model=MODEL_PRESETS[value])
                continue
            section, _, field = key.partition(".")
            sections = {f.name: f for f in dataclasses.fields(Config)}
            if section not in sections or not field:
                raise ConfigError(f"unknown override key {key!r}; expected one of {sorted(sections)} as section.key")
            sub = with_value(getattr(cfg, section), field, value, key, f"unknown override key {key!r}")
            cfg = dataclasses.replace(cfg, **{section: sub})
        return cfg

    def validate(self) -> Config:
        for f in dataclasses.fields(Config):
            section = getattr(self, f.name)
            if type(section) is not type(f.default):
                raise ConfigError(f"config section {f.name!r} is a {type(section).__name__}; "
                                  f"expected a {type(f.default).__name__}")
        self.model.validate()
        self.data.validate()
        self.training.validate()
        self.mesh.validate()
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        check_mesh_fits_model(dataclasses.asdict(self.mesh), self.model)  # -1 axes: make_mesh(model=...)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def from_dict(raw: Any, *, origin: str = "config") -> Config:
    """Inverse of `Config.to_dict`: every section a JSON object, every value of its field's type;
    unknown sections and keys are rejected by name. Ranges are checked by `Config.validate`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} holds a JSON {_json_kind(raw)}; expected an object with sections "
                          f"{[f.name for f in dataclasses.fields(Config)]}")
    sections = {f.name: f.default.__class__ for f in dataclasses.fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)} in {origin}; expected {sorted(sections)}")
    parts = {}
    for name, cls in sections.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} in {origin} is a JSON {_json_kind(values)} "
                              f"({_short(values)}); expected an object of {name}.key values")
        hints = _hints(cls)
        unknown = set(values) - set(hints)
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} in config section {name!r}; {name} has {sorted(hints)}")
        parts[name] = cls(**{k: parse_value(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return Config(**parts)


def with_value(obj: Any, field: str, text: str, key: str, unknown: str) -> Any:
    """The frozen dataclass `obj` with `field` set from the override string `text` (parsed by
    `parse_value` against the field's type): the one override step of every config. A field `obj`
    lacks is a ConfigError starting with `unknown` and listing the fields it has."""
    hints = _hints(type(obj))
    if field not in hints:
        raise ConfigError(f"{unknown}; expected one of {sorted(hints)}")
    return dataclasses.replace(obj, **{field: parse_value(text, hints[field], key, text=True)})


def parse_value(value: Any, typ: Any, key: str, *, text: bool = False) -> Any:
    """`value` as a `typ` (bool, int, float or str) for config key `key`, else a ConfigError.

    text=True: `value` is an override string ("1e-3", "true", "2/3", "1e4" for an int). Otherwise it is a
    JSON value and must already have the type: an int for an int (not a bool, not 3.0), a bool for a
    bool, a number for a float, a string for a string."""
    name = getattr(typ, "__name__", str(typ))
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(typ, name)
    if typ not in (bool, int, float, str):
        raise ConfigError(f"config key {key} has unsupported type {name}")
    if text:
        if not isinstance(value, str):
            raise ConfigError(f"bad value {_short(value)} for {key}: expected {expected} as a string")
        parsed = _from_text(value, typ)
        if parsed is None:
            raise ConfigError(f"bad value {_short(value, text=True)} for {key}: expected {expected}")
        return parsed
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"bad value {_short(value)} for {key}: too large for a float") from None
    if isinstance(value, typ) and not (typ is not bool and isinstance(value, bool)):
        return value
    raise ConfigError(f"bad value {_short(value)} for {key}: expected {expected}")


def _from_text(value: str, typ: type) -> Any:
    """An override string parsed as `typ`, or None when it is not one."""
    s = value.strip()
    if typ is str:
        return value
    if typ is bool:
        return {"1": True, "true": True, "yes": True, "on": True,
                "0": False, "false": False, "no": False, "off": False}.get(s.lower())
    if typ is int:
        try:
            return int(s)
        except ValueError:
            pass
        try:  # scientific notation such as 1e4 or 2.5e3, if it is a whole number
            d = decimal.Decimal(s)
        except (decimal.InvalidOperation, ValueError):
            return None
        if not d.is_finite() or d.adjusted() > 100 or d != d.to_integral_value():
            return None
        return int(d)
    try:  # float
        if "/" in s:  # a fraction such as patch_fraction=2/3
            num, den = s.split("/")
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config dataclass (cached: resolving them parses annotations)."""
    return typing.get_type_hints(cls)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60, *, text: bool = False) -> str:
    """A one-line, bounded repr of a value for an error message (JSON spelling for JSON values,
    Python's repr for override strings)."""
    try:
        s = repr(value) if text else json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _check_types(cfg: Any, section: str) -> None:
    """Every field of a config dataclass holds its annotated type (configs built in Python bypass the
    parser): int fields a non-bool int, float fields a non-bool number, str a str, bool a bool."""
    for key, typ in _hints(type(cfg)).items():
        value = getattr(cfg, key)
        abstract = {int: numbers.Integral, float: numbers.Real}.get(typ, typ)  # numpy scalars are fine
        ok = isinstance(value, abstract) and (typ is bool or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{section}.{key}={_short(value)} is a {type(value).__name__}; expected {typ.__name__}")


def _at_least(cfg: Any, section: str, key: str, low: int, note: str = "") -> None:
    value = getattr(cfg, key)
    if value < low:
        raise ConfigError(f"{section}.{key}={value} must be >= {low}{note}")


def _finite_positive(cfg: Any, section: str, key: str) -> None:
    value = getattr(cfg, key)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{section}.{key}={value} must be a finite number > 0")


def _seed(cfg: Any, section: str) -> None:
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError(f"{section}.seed={cfg.seed} must be in [0, 2**32)")
