"""Hugging Face interop: export a pcomp run as a `transformers` Llama folder, import one back.

`export_hf(RUN, OUT)` writes what `LlamaForCausalLM.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load: `config.json`, `model.safetensors` (sharded with
huggingface_hub's own splitter above `max_shard_size`), `generation_config.json` and the tokenizer.
`import_hf(SRC, RUN)` turns a local Llama folder into a pcomp run directory (config.json,
tokenizer/, an orbax checkpoint at step 0) that `pcomp train --config RUN/config.json` continues and
`pcomp eval` / `pcomp generate` read.

The two models are the same function, so no weight is permuted:
- RoPE: pcomp rotates halves (`rotate_half`) with inv_freq = theta^(-2i/h), as HF Llama does;
- attention, SwiGLU MLP and RMSNorm (float32 statistics, eps = `rms_norm_eps`) match, no biases;
- HF Linear weights are [out, in]: pcomp's [d, n, h] query kernel is `q_proj.weight.T` reshaped,
  with head-major output rows, and GQA groups query heads by kv head the same way (`repeat_kv`).
pcomp pads the embedding table (and an untied LM head) to a multiple of 128 rows and masks the
padded logits; only the `vocab_size` real rows are exported, and import pads with zeros.
Weights are saved in `model.param_dtype`; `config.json`'s dtype is the compute dtype
(`model.dtype`), so bf16 runs load in bf16 with `dtype="auto"`. Import keeps the stored precision
(bf16 weights stay bf16, others become float32 params; float16 is widened exactly to float32).

Tokenizers: a SentencePiece run ships its model as `tokenizer.model` (loaded as a LlamaTokenizer;
ids equal pcomp's on any text without a literal U+2581, which pcomp encodes as byte pieces); the
byte tokenizer becomes a byte-level `tokenizers` BPE with no merges whose ids are the byte values,
BOS=256 and EOS=257. Compressed-text (M2) runs export the model only, with a README saying their
tokens are M1-coded windows. Every export also keeps the pcomp tokenizer in `pcomp_tokenizer/`, so
import restores it exactly.

torch, transformers and safetensors are imported inside the functions: `import pcomp` never needs them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from pcomp.config import Config, DataConfig, ModelConfig, TrainingConfig
from pcomp.errors import CheckpointError, ConfigError

PCOMP_TOKENIZER_DIR = "pcomp_tokenizer"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_TEXT_TOKENIZERS = ("bytes", "sentencepiece")


def _require_hf():
    for module in ("torch", "transformers", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(
                f"Hugging Face interop needs the python package {module!r}: pip install 'pcomp[hf]' "
                "(torch==2.13.0, transformers, safetensors)"
            ) from None


# --- configs -------------------------------------------------------------------------------------
def hf_config_dict(cfg: ModelConfig, tokenizer=None) -> dict:
    """LlamaConfig keyword arguments for `cfg` (and the tokenizer's BOS/EOS ids)."""
    return dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=cfg.init_std,
        dtype=cfg.dtype,
        bos_token_id=getattr(tokenizer, "bos_id", None),
        eos_token_id=getattr(tokenizer, "eos_id", None),
    )


def _rope_theta(raw: dict) -> float:
    """rope_theta from a transformers v4 (`rope_theta`, `rope_scaling`) or v5 (`rope_parameters`) config."""
    scaling = raw.get("rope_scaling")
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"config.json rope_parameters={params} (per-layer RoPE) cannot be represented in pcomp")
    if scaling is not None and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        raise ConfigError(f"config.json rope_scaling={scaling} cannot be represented in pcomp (plain RoPE only)")
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            raise ConfigError(f"config.json rope_parameters.rope_type={params['rope_type']!r} cannot be represented "
                              "in pcomp (plain RoPE only)")
        extra = set(params) - {"rope_type", "rope_theta", "partial_rotary_factor"}
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"config.json rope_parameters.partial_rotary_factor={params['partial_rotary_factor']} "
                              "cannot be represented in pcomp (full rotary only)")
        if extra:
            raise ConfigError(f"config.json rope_parameters has {sorted(extra)}, which pcomp cannot represent")
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(raw.get("rope_theta", 10_000.0))


def model_config_from_hf(raw: dict, *, name: str = "hf-import") -> ModelConfig:
    """The pcomp ModelConfig of a Llama `config.json` dict; ConfigError naming any field pcomp cannot represent."""
    archs = raw.get("architectures") or ["LlamaForCausalLM"]
    if raw.get("model_type", "llama") != "llama" or archs != ["LlamaForCausalLM"]:
        raise ConfigError(f"config.json model_type={raw.get('model_type')!r} architectures={archs}; "
                          "pcomp imports only model_type='llama' / LlamaForCausalLM")
    for key, expected in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu"),
                          ("pretraining_tp", 1), ("attention_dropout", 0.0)):
        if key in raw and raw[key] != expected:
            raise ConfigError(f"config.json {key}={raw[key]!r} cannot be represented in pcomp (expected {expected!r})")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(raw.get(key), int):
            raise ConfigError(f"config.json {key}={raw.get(key)!r}; expected an integer")
    d, n = raw["hidden_size"], raw["num_attention_heads"]
    kv = raw.get("num_key_value_heads") or n
    if d % n or raw.get("head_dim", d // n) != d // n:
        raise ConfigError(f"config.json head_dim={raw.get('head_dim')} with hidden_size={d}, num_attention_heads={n}: "
                          "pcomp needs head_dim = hidden_size / num_attention_heads")
    dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"config.json dtype={dtype!r}; pcomp computes in 'float32' or 'bfloat16'")
    dtype = "float32" if dtype == "float16" else dtype  # float16 has no pcomp compute dtype; float32 holds it exactly
    cfg = ModelConfig(
        name=name,
        vocab_size=raw["vocab_size"],
        d_model=d,
        n_layers=raw["num_hidden_layers"],
        n_heads=n,
        n_kv_heads=0 if kv == n else kv,
        d_ff=raw["intermediate_size"],
        max_seq_len=int(raw.get("max_position_embeddings", 2048)),
        rope_theta=_rope_theta(raw),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        dtype=dtype,
        param_dtype=dtype,
        init_std=float(raw.get("initializer_range", 0.02)),
    )
    cfg.validate()
    return cfg


# --- weights ---------------------------------------------------------------------------------------
def to_hf_state_dict(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """HF Llama tensor name -> numpy array (param dtype; bf16 as ml_dtypes.bfloat16), real vocab rows only;
    layer i's tensors are slice i of pcomp's stacked block parameters."""
    import jax
    from flax import nnx

    p = nnx.to_pure_dict(params)
    v, d = cfg.vocab_size, cfg.d_model
    c = np.ascontiguousarray
    out = {"model.embed_tokens.weight": c(np.asarray(p["embed"])[:v]),
           "model.norm.weight": c(np.asarray(p["final_norm"]["scale"]))}
    layers = p["blocks"]  # every block parameter stacked along a leading layers axis
    for i in range(cfg.n_layers):
        b, pre = jax.tree.map(lambda x: np.asarray(x)[i], layers), f"model.layers.{i}."
        a, m = b["attn"], b["mlp"]
        out[pre + "self_attn.q_proj.weight"] = c(np.asarray(a["wq"]).reshape(d, -1).T)
        out[pre + "self_attn.k_proj.weight"] = c(np.asarray(a["wk"]).reshape(d, -1).T)
        out[pre + "self_attn.v_proj.weight"] = c(np.asarray(a["wv"]).reshape(d, -1).T)
        out[pre + "self_attn.o_proj.weight"] = c(np.asarray(a["wo"]).reshape(-1, d).T)
        out[pre + "mlp.gate_proj.weight"] = c(np.asarray(m["w_gate"]).T)
        out[pre + "mlp.up_proj.weight"] = c(np.asarray(m["w_up"]).T)
        out[pre + "mlp.down_proj.weight"] = c(np.asarray(m["w_down"]).T)
        out[pre + "input_layernorm.weight"] = c(np.asarray(b["attn_norm"]["scale"]))
        out[pre + "post_attention_layernorm.weight"] = c(np.asarray(b["mlp_norm"]["scale"]))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = c(np.asarray(p["lm_head"])[:, :v].T)
    return out


def from_hf_state_dict(cfg: ModelConfig, tensors: dict[str, np.ndarray]):
    """pcomp parameters (nnx.State, `cfg.param_dtype`) from HF Llama tensors; padded vocab rows are zero;
    the per-layer tensors are stacked into pcomp's block parameters [n_layers, ...]."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pcomp.train import step as steplib

    v, pv, d, n, k, h = cfg.vocab_size, cfg.padded_vocab, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.param_dtype)
    used = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"the Hugging Face weights have no tensor {name!r}")
        x = tensors[name]
        if tuple(x.shape) != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(x.shape)}; the config implies {shape}")
        used.add(name)
        return x

    def pad_rows(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.zeros((pv - v, *x.shape[1:]), x.dtype)], axis=0)

    layers = []
    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        layers.append({
            "attn": {"wq": get(pre + "self_attn.q_proj.weight", (n * h, d)).T.reshape(d, n, h),
                     "wk": get(pre + "self_attn.k_proj.weight", (k * h, d)).T.reshape(d, k, h),
                     "wv": get(pre + "self_attn.v_proj.weight", (k * h, d)).T.reshape(d, k, h),
                     "wo": get(pre + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d)},
            "attn_norm": {"scale": get(pre + "input_layernorm.weight", (d,))},
            "mlp": {"w_gate": get(pre + "mlp.gate_proj.weight", (cfg.d_ff, d)).T,
                    "w_up": get(pre + "mlp.up_proj.weight", (cfg.d_ff, d)).T,
                    "w_down": get(pre + "mlp.down_proj.weight", (d, cfg.d_ff)).T},
            "mlp_norm": {"scale": get(pre + "post_attention_layernorm.weight", (d,))},
        })
    blocks = jax.tree.map(lambda *per_layer: np.stack(per_layer), *layers)  # [n_layers, ...] each
    pure = {"embed": pad_rows(get("model.embed_tokens.weight", (v, d))), "blocks": blocks,
            "final_norm": {"scale": get("model.norm.weight", (d,))}}
    if not cfg.tie_embeddings:
        pure["lm_head"] = pad_rows(get("lm_head.weight", (v, d))).T
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()  # some tied checkpoints store the copy
    unused = sorted(u for u in set(tensors) - used - ignorable if not u.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"tensor {unused[0]!r} (of {len(unused)} unknown) cannot be represented in pcomp")
    pure = _map_pure(pure, lambda x: jnp.asarray(np.ascontiguousarray(x), dtype))
    _, state = steplib.abstract_model(cfg)
    nnx.replace_by_pure_dict(state, pure)
    return state


def _map_pure(tree, fn):
    return {key: _map_pure(value, fn) if isinstance(value, dict) else fn(value) for key, value in tree.items()}


def _to_torch(x: np.ndarray):
    import torch

    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def _from_torch(t) -> np.ndarray:
    import ml_dtypes
    import torch

    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    if t.dtype == torch.float16:
        return t.float().numpy()  # exact
    if t.dtype != torch.float32:
        raise CheckpointError(f"tensor dtype {t.dtype}; pcomp imports float32, bfloat16 or float16 weights")
    return t.numpy()


def save_safetensors(tensors: dict[str, np.ndarray], out: Path, max_shard_size=DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """`model.safetensors`, or shards + `model.safetensors.index.json` above `max_shard_size` (huggingface_hub's
    splitter, as `save_pretrained` does). Returns the file names written."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    state = {name: _to_torch(x) for name, x in tensors.items()}
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(split.filename_to_tensors)


def load_safetensors(src: Path) -> dict[str, np.ndarray]:
    """Every tensor of `src/model.safetensors` or of the shards its index names."""
    from safetensors.torch import load_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{src} has no model.safetensors (or index); pcomp imports safetensors weights only")
    tensors = {}
    for f in files:
        tensors.update({name: _from_torch(t) for name, t in load_file(str(src / f)).items()})
    return tensors


# --- tokenizers -------------------------------------------------------------------------------------
def _byte_level_tokenizer(tokenizer):
    """A `tokenizers` byte-level BPE without merges: id i is byte i; BOS/EOS as pcomp numbers them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins, GPT-2's mapping
    byte_to_char = _gpt2_bytes_to_unicode()
    assert set(byte_to_char.values()) == set(byte_chars)
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = {}
    if tokenizer.bos_id is not None:
        tok.add_special_tokens(["<s>", "</s>"])
        specials = dict(bos_token="<s>", eos_token="</s>")
        assert tok.token_to_id("<s>") == tokenizer.bos_id and tok.token_to_id("</s>") == tokenizer.eos_id
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=10**9,
                                   model_input_names=["input_ids", "attention_mask"], **specials)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ByteLevel pre-tokenizer's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _sentencepiece_tokenizer(tokenizer, out: Path):
    from transformers import AutoTokenizer

    (out / "tokenizer.model").write_bytes(tokenizer.model_proto)
    sp_config = {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False, "legacy": False,
                 "add_bos_token": tokenizer.bos_id is not None, "add_eos_token": False,
                 "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 10**9}
    (out / "tokenizer_config.json").write_text(json.dumps(sp_config, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(str(out))


def export_tokenizer(tokenizer, out: Path) -> str:
    """Write the HF tokenizer files for `tokenizer` into `out` (plus pcomp_tokenizer/); returns what was written."""
    tokenizer.save(out / PCOMP_TOKENIZER_DIR)
    if tokenizer.name == "bytes":
        _byte_level_tokenizer(tokenizer).save_pretrained(str(out))
        return "byte-level tokenizer"
    if tokenizer.name == "sentencepiece":
        _sentencepiece_tokenizer(tokenizer, out).save_pretrained(str(out))
        return "SentencePiece tokenizer"
    (out / "README.md").write_text(
        f"# pcomp export of a model over compressed text ({tokenizer.name})\n\n"
        f"This model's tokens are not text: they are M1-coded windows (tokenizer kind {tokenizer.name!r}, "
        f"{tokenizer.vocab_size} ids), produced by pcomp's compressor from raw bytes. No Hugging Face tokenizer "
        "can express that mapping, so this folder has none. Encode and decode text with pcomp "
        f"(`pcomp.data.tokenizers.load_tokenizer('{PCOMP_TOKENIZER_DIR}')`, which also needs the M1 run it names).\n")
    return f"no HF tokenizer (compressed-text tokenizer {tokenizer.name!r}; see README.md)"


def import_tokenizer(src: Path):
    """The pcomp tokenizer of an HF folder: pcomp_tokenizer/ if pcomp wrote it, else its SentencePiece model."""
    from pcomp.data.tokenizers import SentencePieceTokenizer, load_tokenizer

    if (src / PCOMP_TOKENIZER_DIR / "tokenizer.json").is_file():
        return load_tokenizer(src / PCOMP_TOKENIZER_DIR)
    if not (src / "tokenizer.model").is_file():
        raise ConfigError(f"tokenizer: {src} has no tokenizer.model; pcomp imports SentencePiece tokenizers only")
    try:
        return SentencePieceTokenizer((src / "tokenizer.model").read_bytes())
    except RuntimeError as e:
        raise ConfigError(f"tokenizer: {src / 'tokenizer.model'} is not a SentencePiece model: {e}") from None


# --- export / import -----------------------------------------------------------------------------
def export_hf(run, out, *, max_shard_size=DEFAULT_MAX_SHARD_SIZE) -> dict:
    """Write the trained run (`pcomp.train.load.TrainedModel` or its work directory) as an HF Llama folder.

    A patch-level-trained run exports as the ordinary token-level model it is (same parameters).
    Returns a summary {"out", "files", "tokenizer", "step"}.
    """
    _require_hf()
    from transformers import GenerationConfig, LlamaConfig

    from pcomp.train.load import load_trained

    out = Path(out)
    if out.exists() and not out.is_dir():  # a file, device or FIFO: never replaced, checked before loading
        raise ConfigError(f"output {out} exists and is not a directory; export-hf writes a new folder")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} exists and is not empty")
    if not hasattr(run, "params"):
        run = load_trained(run)
    out.mkdir(parents=True, exist_ok=True)
    cfg = run.cfg.model
    try:
        files = save_safetensors(to_hf_state_dict(cfg, run.params), out, max_shard_size)
        LlamaConfig(**hf_config_dict(cfg, run.tokenizer)).save_pretrained(str(out))
        GenerationConfig(bos_token_id=run.tokenizer.bos_id, eos_token_id=run.tokenizer.eos_id,
                         max_length=cfg.max_seq_len).save_pretrained(str(out))
        what = export_tokenizer(run.tokenizer, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written folder that transformers would half-load
        raise
    return {"out": str(out), "files": files, "tokenizer": what, "step": run.step}


def import_hf(src, out, overrides: tuple[str, ...] = ()) -> Config:
    """Turn the local Llama folder `src` into the pcomp run directory `out` (step-0 checkpoint).

    `overrides` (`data.*`, `training.*`, `mesh.*`) set how the run continues; `training.workdir` is `out`.
    """
    _require_hf()
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src} is not a Hugging Face model folder (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} exists and is not empty")
    model_cfg = model_config_from_hf(json.loads((src / "config.json").read_text()))
    tokenizer = import_tokenizer(src)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise ConfigError(f"config.json vocab_size={model_cfg.vocab_size} but the tokenizer has "
                          f"{tokenizer.vocab_size} ids; pcomp needs them equal")
    tensors = load_safetensors(src)
    stored = {x.dtype.name for x in tensors.values()}  # keep the weights' own precision (bf16 compute may
    param_dtype = "bfloat16" if stored == {"bfloat16"} else "float32"  # run on float32 weights)
    model_cfg = dataclasses.replace(model_cfg, param_dtype=param_dtype)
    params = from_hf_state_dict(model_cfg, tensors)
    kind = tokenizer.name if tokenizer.name in _TEXT_TOKENIZERS else str(out / "tokenizer")
    cfg = Config(model=model_cfg,
                 data=DataConfig(tokenizer=kind, seq_len=min(DataConfig.seq_len, model_cfg.max_seq_len)),
                 training=TrainingConfig(workdir=str(out)))
    bad = [o for o in overrides if o.split("=", 1)[0].split(".")[0] not in ("data", "training", "mesh")]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: import-hf takes data.*, training.* and mesh.* "
                          "(the model is the import)")
    cfg = cfg.override(*overrides)
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, workdir=str(out))).validate()
    out.mkdir(parents=True, exist_ok=True)
    from pcomp.train.trainer import save_initial_checkpoint

    try:
        tokenizer.save(out / "tokenizer")
        save_initial_checkpoint(cfg, params)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return cfg


# --- CLI -----------------------------------------------------------------------------------------
def _cmd_export(args) -> None:
    r = export_hf(args.checkpoint, args.out, max_shard_size=args.max_shard_size)
    print(f"{args.checkpoint} (step {r['step']}) -> {r['out']}: {', '.join(r['files'])}, {r['tokenizer']}")


def _cmd_import(args) -> None:
    cfg = import_hf(args.src, args.out, tuple(args.overrides))
    print(f"{args.src} -> {args.out}: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, vocab "
          f"{cfg.model.vocab_size}; continue with: pcomp train --config {Path(args.out) / 'config.json'}")


def add_commands(sub) -> None:
    """Register `pcomp export-hf` and `pcomp import-hf` on the CLI's subparsers."""
    e = sub.add_parser("export-hf", help="write a trained run as a Hugging Face Llama folder (transformers)")
    e.add_argument("--checkpoint", required=True, help="the run's work directory")
    e.add_argument("out", help="output folder (new or empty)")
    e.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="shard model.safetensors above this")
    e.set_defaults(fn=_cmd_export)

    i = sub.add_parser("import-hf", help="turn a local Hugging Face Llama folder into a pcomp run directory")
    i.add_argument("src", help="local folder with config.json, model.safetensors and tokenizer.model")
    i.add_argument("--out", required=True, help="the new run directory")
    i.add_argument("overrides", nargs="*",
                   help="data.key=value / training.key=value for continuing the run (after SRC, before --out)")
    i.set_defaults(fn=_cmd_import)


__all__ = ["add_commands", "export_hf", "import_hf", "hf_config_dict", "model_config_from_hf", "to_hf_state_dict",
           "from_hf_state_dict", "save_safetensors", "load_safetensors", "export_tokenizer", "import_tokenizer",
           "PCOMP_TOKENIZER_DIR"]

