"""Frozen dataclass configs, one per concern, named presets and `key=value` overrides.

A run is described by one `Config` made of `ModelConfig`, `DataConfig`, `TrainingConfig` and
`MeshConfig`. Start from a preset (`Config.preset("m1-3m")`) or a JSON file written by a
previous run (`runs/x/config.json`), then apply CLI overrides such as `training.lr=1e-3`,
`mesh.fsdp=2` or `model=25m` (swap the whole model preset).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from pcomp.errors import ConfigError


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
    remat: bool = False  # recompute each block in the backward pass (saves activation memory)
    attention: str = "auto"  # auto (blocked on CPU, fused XLA/cuDNN elsewhere) | blocked | fused
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
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16"):
                raise ConfigError(f"model.{key}={getattr(self, key)!r}; expected 'float32' or 'bfloat16'")
        if self.attention not in ("auto", "blocked", "fused"):
            raise ConfigError(f"model.attention={self.attention!r}; expected 'auto', 'blocked' or 'fused'")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1")


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

    def validate(self) -> None:
        if self.patch_size < 1:
            raise ConfigError(f"training.patch_size={self.patch_size} must be >= 1")
        if not 0.0 <= self.patch_fraction <= 1.0:
            raise ConfigError(f"training.patch_fraction={self.patch_fraction} must be in [0, 1]")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(
                f"training.batch_size={self.batch_size} must be divisible by training.grad_accum={self.grad_accum}"
            )
        for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.{key}={getattr(self, key)} must be >= 1")
        if self.steps < 1 and self.tokens < 1:
            raise ConfigError("set training.steps or training.tokens to a positive number")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh: data parallel x fully-sharded data parallel x tensor parallel."""

    data: int = -1  # -1 = all devices not used by fsdp and tensor
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    mesh: MeshConfig = MeshConfig()

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def preset(name: str) -> Config:
        if name not in RUN_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(RUN_PRESETS)} or a .json file")
        return RUN_PRESETS[name]

    @staticmethod
    def load(preset_or_file: str) -> Config:
        """A preset name, or a JSON file (e.g. a run's config.json)."""
        path = Path(preset_or_file)
        if preset_or_file.endswith(".json") or path.is_file():
            if not path.is_file():
                raise ConfigError(f"config file {preset_or_file!r} does not exist")
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"config file {preset_or_file!r} is not valid JSON: {e}") from None
            return from_dict(raw)
        return Config.preset(preset_or_file)

    def override(self, *assignments: str) -> Config:
        """Apply `section.key=value` strings (or `model=PRESET`)."""
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
            sub = getattr(cfg, section)
            fields = {f.name: f for f in dataclasses.fields(sub)}
            if field not in fields:
                raise ConfigError(f"unknown override key {key!r}; {section} has {sorted(fields)}")
            typ = typing.get_type_hints(type(sub))[field]
            sub = dataclasses.replace(sub, **{field: _parse(value, typ, key)})
            cfg = dataclasses.replace(cfg, **{section: sub})
        return cfg

    def validate(self) -> Config:
        self.model.validate()
        self.training.validate()
        if self.data.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.data.seq_len} must be >= 2")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.data.eval_fraction} must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def from_dict(raw: dict[str, Any]) -> Config:
    """Inverse of `Config.to_dict`, rejecting unknown keys by name."""
    parts = {}
    for f in dataclasses.fields(Config):
        cls = f.default.__class__
        values = raw.get(f.name, {})
        known = {g.name for g in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} in config section {f.name!r}")
        parts[f.name] = cls(**values)
    unknown = set(raw) - set(parts)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}")
    return Config(**parts)


def _parse(value: str, typ: Any, key: str) -> Any:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            return int(float(value)) if ("e" in value.lower() and "." not in value) else int(value)
        if typ is float:
            if "/" in value:  # allow fractions such as patch_fraction=2/3
                num, den = value.split("/")
                return float(num) / float(den)
            return float(value)
        return str(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"bad value {value!r} for {key}: expected {typ.__name__}") from None


# --- presets ------------------------------------------------------------------------------------
def _model(name: str, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, **kw)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # CPU unit-test size.
    "test-tiny": _model("test-tiny", d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128),
    # Patch-scaling study (experiments/patch_scaling.py), bytes vocabulary (258, padded to 384):
    # 92,400 parameters with embeddings (55,536 without); the CPU reaches ~300 tokens per parameter.
    "ps-100k": _model("ps-100k", d_model=48, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128),
    # 516,960 parameters with embeddings (443,232 without).
    "ps-500k": _model("ps-500k", d_model=96, n_layers=4, n_heads=4, d_ff=256, max_seq_len=128),
    # The CPU demo: ~1.6M parameters, trains in minutes.
    "demo": _model("demo", d_model=192, n_layers=4, n_heads=6, d_ff=512, max_seq_len=256),
    # The Equal-Info Windows paper's compressor model M1: 3 layers, d=256, 4 heads, MLP 1024, bytes.
    "m1-3m": _model("m1-3m", d_model=256, n_layers=3, n_heads=4, d_ff=1024, max_seq_len=128),
    "25m": _model("25m", d_model=512, n_layers=8, n_heads=8, d_ff=1408, max_seq_len=512),
    "125m": _model("125m", d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024),
    "370m": _model("370m", d_model=1024, n_layers=24, n_heads=16, d_ff=2816, max_seq_len=2048),
    "1b": _model("1b", d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, d_ff=5632, max_seq_len=2048),
}

RUN_PRESETS: dict[str, Config] = {
    "test-tiny": Config(
        model=MODEL_PRESETS["test-tiny"],
        data=DataConfig(seq_len=64),
        training=TrainingConfig(batch_size=8, steps=20, warmup_steps=2, log_every=5, checkpoint_every=10),
    ),
    # Patch-scaling study: byte-level, 32 x 128 tokens per step (the study sets the token budget).
    "ps-100k": Config(
        model=MODEL_PRESETS["ps-100k"],
        data=DataConfig(seq_len=128),
        training=TrainingConfig(batch_size=32, steps=1000, lr=3e-3, workdir="runs/ps-100k"),
    ),
    "ps-500k": Config(
        model=MODEL_PRESETS["ps-500k"],
        data=DataConfig(seq_len=128),
        training=TrainingConfig(batch_size=32, steps=1000, lr=3e-3, workdir="runs/ps-500k"),
    ),
    "demo": Config(
        model=MODEL_PRESETS["demo"],
        data=DataConfig(seq_len=256),
        training=TrainingConfig(batch_size=16, steps=600, lr=3e-3, warmup_steps=60, log_every=10,
                                checkpoint_every=200, workdir="runs/demo"),
    ),
    "m1-3m": Config(
        model=MODEL_PRESETS["m1-3m"],
        data=DataConfig(seq_len=128, bos_first=True),
        training=TrainingConfig(batch_size=64, steps=3000, lr=2e-3, warmup_steps=200, workdir="runs/m1"),
    ),
    "25m": Config(
        model=MODEL_PRESETS["25m"],
        data=DataConfig(seq_len=512),
        training=TrainingConfig(batch_size=32, steps=5000, lr=1e-3, workdir="runs/25m"),
    ),
    "125m": Config(
        model=dataclasses.replace(MODEL_PRESETS["125m"], dtype="bfloat16"),
        data=DataConfig(seq_len=1024, tokenizer="sentencepiece", vocab_size=32000),
        training=TrainingConfig(batch_size=256, steps=20000, lr=6e-4, warmup_steps=1000, workdir="runs/125m"),
    ),
    "370m": Config(
        model=dataclasses.replace(MODEL_PRESETS["370m"], dtype="bfloat16"),
        data=DataConfig(seq_len=2048, tokenizer="sentencepiece", vocab_size=32000),
        training=TrainingConfig(batch_size=512, steps=30000, lr=3e-4, warmup_steps=2000, workdir="runs/370m"),
    ),
    "1b": Config(
        model=dataclasses.replace(MODEL_PRESETS["1b"], dtype="bfloat16", remat=True),
        data=DataConfig(seq_len=2048, tokenizer="sentencepiece", vocab_size=32000),
        training=TrainingConfig(batch_size=512, steps=50000, lr=3e-4, warmup_steps=2000, workdir="runs/1b"),
    ),
}
