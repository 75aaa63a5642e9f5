"""Golden tests of the Hugging Face interop (pcomp.hf) against `transformers` itself.

transformers' LlamaForCausalLM is the independent reference: a random pcomp model exported to it must
give the same float32 logits and the same greedy continuation; import(export(.)) must give back the
exact parameters; a random HF Llama imported into pcomp and exported again must compute the same.
Parameters are built at random (no training), so these run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from pcomp import hf  # noqa: E402
from pcomp.cli import main  # noqa: E402
from pcomp.config import Config, ModelConfig, TrainingConfig  # noqa: E402
from pcomp.data.sources import load_documents  # noqa: E402
from pcomp.data.tokenizers import ByteTokenizer, SentencePieceTokenizer  # noqa: E402
from pcomp.errors import ConfigError  # noqa: E402
from pcomp.models.generate import generate  # noqa: E402
from pcomp.train import step as steplib  # noqa: E402
from pcomp.train.load import TrainedModel, load_trained  # noqa: E402

TOL = 1e-4


def random_run(tmp_path: Path, *, tie: bool, kv_heads: int, tokenizer=None, std: float = 0.2,
               training: TrainingConfig = TrainingConfig()) -> TrainedModel:
    """A random pcomp model (no training) as a TrainedModel; padded vocab rows zero, as import writes them."""
    tokenizer = tokenizer or ByteTokenizer()
    cfg = ModelConfig(name="hf-test", vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4,
                      n_kv_heads=kv_heads, d_ff=96, max_seq_len=64, tie_embeddings=tie, init_std=std)
    params = steplib.init_params(cfg, seed=1)
    pure = nnx.to_pure_dict(params)
    rng = np.random.default_rng(0)
    for norm in ("attn_norm", "mlp_norm"):  # norm scales away from 1 (and per layer) so a swap would show
        pure["blocks"][norm]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, (cfg.n_layers, cfg.d_model)), jnp.float32)
    pure["embed"] = pure["embed"].at[cfg.vocab_size:].set(0.0)
    if not tie:
        pure["lm_head"] = pure["lm_head"].at[:, cfg.vocab_size:].set(0.0)
    nnx.replace_by_pure_dict(params, pure)
    graphdef, _ = steplib.abstract_model(cfg)
    return TrainedModel(Config(model=cfg, training=training), tokenizer, graphdef, params, 0, tmp_path)


def pcomp_logits(run: TrainedModel, tokens_bt: np.ndarray) -> np.ndarray:
    logits = nnx.merge(run.graphdef, run.params)(jnp.asarray(tokens_bt))
    return np.asarray(logits)[..., : run.cfg.model.vocab_size]


def hf_logits(folder: Path, tokens_bt: np.ndarray) -> np.ndarray:
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens_bt, dtype=torch.long)).logits.numpy()


def pure(params) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(params))


@pytest.mark.slow
@pytest.mark.parametrize("tie,kv_heads,shard", [(True, 2, False), (False, 0, True), (False, 1, False)])
def test_exported_model_gives_pcomp_logits(tmp_path, tie, kv_heads, shard):
    run = random_run(tmp_path, tie=tie, kv_heads=kv_heads)
    out = tmp_path / "hf"
    summary = hf.export_hf(run, out, max_shard_size="40KB" if shard else hf.DEFAULT_MAX_SHARD_SIZE)
    assert (len(summary["files"]) > 1) == shard
    assert (out / "model.safetensors.index.json").is_file() == shard
    config = json.loads((out / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["num_key_value_heads"]) == (tie, kv_heads or 4)
    assert config["vocab_size"] == 258  # the real vocabulary, not the padded table
    tokens = np.random.default_rng(1).integers(0, 258, (3, 48))
    ours, theirs = pcomp_logits(run, tokens), hf_logits(out, tokens)
    assert ours.shape == theirs.shape == (3, 48, 258)
    assert np.abs(ours).max() > 1.0  # logits far from uniform: a layout error would not hide in the tolerance
    np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)


@pytest.mark.slow
def test_greedy_generation_matches_transformers(tmp_path):
    run = random_run(tmp_path, tie=False, kv_heads=2, std=0.5)
    out = tmp_path / "hf"
    hf.export_hf(run, out)
    prompt = np.asarray([256, *b"The "], np.int32)
    ours = generate(run.graphdef, run.params, prompt, max_new_tokens=32, max_len=64, temperature=0.0)
    model = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    theirs = model.generate(torch.as_tensor(prompt[None], dtype=torch.long), max_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, len(prompt):].numpy()
    assert len(ours) == len(theirs) == 32
    assert len(set(ours.tolist())) > 1  # not a constant continuation
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_import_of_export_is_bit_identical(tmp_path, tie):
    run = random_run(tmp_path, tie=tie, kv_heads=2)
    hf.export_hf(run, tmp_path / "hf")
    cfg = hf.import_hf(tmp_path / "hf", tmp_path / "run", ("training.progress=false",))
    back = load_trained(tmp_path / "run")
    assert back.step == 0
    assert dataclasses_equal_except(back.cfg.model, run.cfg.model, ("name",))
    assert cfg.model == back.cfg.model
    assert back.tokenizer.to_config() == run.tokenizer.to_config()
    a, b = pure(run.params), pure(back.params)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def dataclasses_equal_except(a, b, fields) -> bool:
    import dataclasses

    return dataclasses.replace(a, **{f: None for f in fields}) == dataclasses.replace(b, **{f: None for f in fields})


@pytest.mark.slow
def test_bfloat16_export_keeps_dtype_and_bits(tmp_path):
    run = random_run(tmp_path, tie=False, kv_heads=2)
    import dataclasses

    cfg16 = dataclasses.replace(run.cfg.model, dtype="bfloat16", param_dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), run.params)
    run16 = TrainedModel(Config(model=cfg16), run.tokenizer, steplib.abstract_model(cfg16)[0], params16, 3, tmp_path)
    hf.export_hf(run16, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype="auto")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    hf.import_hf(tmp_path / "hf", tmp_path / "run", ("training.progress=false",))
    back = load_trained(tmp_path / "run")
    assert back.cfg.model.param_dtype == "bfloat16"
    for x, y in zip(jax.tree.leaves(pure(params16)), jax.tree.leaves(pure(back.params))):
        assert y.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.fixture(scope="module")
def sp_tokenizer():
    docs = list(load_documents("embedded", "train", eval_fraction=0.1))[:50]
    return SentencePieceTokenizer.train(docs, 400)


def random_hf_llama(folder: Path, tokenizer, *, tie: bool) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=80,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=5000.0,
                                      tie_word_embeddings=tie, initializer_range=0.2, bos_token_id=1,
                                      eos_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder))
    (folder / "tokenizer.model").write_bytes(tokenizer.model_proto)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_export_of_import_gives_the_hf_logits(tmp_path, capsys, sp_tokenizer, tie):
    src = tmp_path / "src"
    model = random_hf_llama(src, sp_tokenizer, tie=tie)
    tokens = np.random.default_rng(2).integers(0, sp_tokenizer.vocab_size, (2, 40))
    with torch.no_grad():
        reference = model(torch.as_tensor(tokens)).logits.numpy()
    assert main(["import-hf", str(src), "training.progress=false", "--out", str(tmp_path / "run")]) == 0
    run = load_trained(tmp_path / "run")
    assert run.cfg.model.rope_theta == 5000.0 and run.cfg.model.norm_eps == 1e-6 and run.cfg.model.n_kv_heads == 2
    assert run.tokenizer.name == "sentencepiece" and run.tokenizer.model_proto == sp_tokenizer.model_proto
    np.testing.assert_allclose(pcomp_logits(run, tokens), reference, atol=TOL, rtol=0)
    # `pcomp generate` (greedy) continues the prompt exactly as transformers' generate does
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "The ", "--max-tokens", "32",
                 "--temperature", "0"]) == 0
    prompt = [1, *sp_tokenizer.encode(b"The ").tolist()]
    with torch.no_grad():
        ids = model.generate(torch.as_tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=2,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert len(set(ids)) > 1
    expected = "The " + sp_tokenizer.decode(ids).decode("utf-8", errors="replace") + "\n"
    assert capsys.readouterr().out == expected
    assert main(["export-hf", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf", tokens), reference)  # the very same weights


def test_sentencepiece_tokenizer_loads_with_autotokenizer(tmp_path, sp_tokenizer):
    run = random_run(tmp_path, tie=True, kv_heads=0, tokenizer=sp_tokenizer)
    hf.export_hf(run, tmp_path / "hf")
    at = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (at.bos_token_id, at.eos_token_id, at.unk_token_id) == (1, 2, 0)
    assert len(at) == sp_tokenizer.vocab_size
    for text in ["Patch-level training, then token-level.\n  Two spaces", " leading space", "ünïcödé 中文\ttab"]:
        ids = sp_tokenizer.encode(text.encode()).tolist()
        assert at.encode(text, add_special_tokens=False) == ids
        assert at.encode(text) == [1, *ids]
        assert at.decode(ids) == text


def test_byte_tokenizer_ids_round_trip_through_autotokenizer(tmp_path):
    run = random_run(tmp_path, tie=True, kv_heads=0)
    hf.export_hf(run, tmp_path / "hf")
    at = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (at.bos_token_id, at.eos_token_id, len(at)) == (256, 257, 258)
    assert len(set(at.convert_ids_to_tokens(list(range(258))))) == 258

    @settings(max_examples=60, deadline=None)
    @given(st.text(max_size=40))
    def check(text):
        ids = list(text.encode("utf-8"))  # pcomp's byte ids, written out independently
        assert at.encode(text, add_special_tokens=False) == ids
        assert at.encode(text) == [256, *ids]
        assert at.decode(ids) == text
        assert at.decode([256, *ids, 257], skip_special_tokens=True) == text

    check()


@pytest.mark.slow
def test_compressed_text_and_patch_level_runs_export_with_a_note(tmp_path):
    from pcomp.compress.tokenizers import GZipTokenizer

    run = random_run(tmp_path, tie=False, kv_heads=0, tokenizer=GZipTokenizer(8),
                     training=TrainingConfig(patch_size=4))
    summary = hf.export_hf(run, tmp_path / "hf")
    assert "no HF tokenizer" in summary["tokenizer"]
    assert "M1-coded windows" in (tmp_path / "hf" / "README.md").read_text()
    assert not (tmp_path / "hf" / "tokenizer_config.json").exists()
    tokens = np.random.default_rng(3).integers(0, 256, (1, 32))
    np.testing.assert_allclose(hf_logits(tmp_path / "hf", tokens), pcomp_logits(run, tokens), atol=TOL, rtol=0)


@pytest.mark.parametrize("field,value", [
    ("model_type", "mistral"), ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("attention_bias", True), ("mlp_bias", True), ("head_dim", 32), ("hidden_act", "gelu"),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
])
def test_unrepresentable_configs_are_one_line_errors_naming_the_field(tmp_path, capsys, sp_tokenizer, field, value):
    src = tmp_path / "src"
    random_hf_llama(src, sp_tokenizer, tie=True)
    raw = json.loads((src / "config.json").read_text())
    raw[field] = value
    (src / "config.json").write_text(json.dumps(raw))
    capsys.readouterr()  # drop save_pretrained's progress output
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: ") and err.count("\n") == 1 and field in err
    assert not (tmp_path / "run").exists()


def test_tokenizer_without_sentencepiece_model_is_an_error(tmp_path, capsys, sp_tokenizer):
    src = tmp_path / "src"
    random_hf_llama(src, sp_tokenizer, tie=True)
    (src / "tokenizer.model").unlink()
    with pytest.raises(ConfigError, match="tokenizer"):
        hf.import_hf(src, tmp_path / "run")
    capsys.readouterr()
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 2
    assert "tokenizer.model" in capsys.readouterr().err


@pytest.mark.slow
def test_imported_run_continues_training(tmp_path, sp_tokenizer):
    from pcomp.train.trainer import train

    src = tmp_path / "src"
    random_hf_llama(src, sp_tokenizer, tie=True)
    overrides = ("data.seq_len=32", "training.batch_size=8", "training.steps=3", "training.warmup_steps=0",
                 "training.progress=false")
    hf.import_hf(src, tmp_path / "run", overrides)
    before = load_trained(tmp_path / "run")
    summary = train(Config.load(str(tmp_path / "run" / "config.json")))
    after = load_trained(tmp_path / "run")
    assert after.step == 3 and summary.stages[0]["steps"] == 3
    assert np.isfinite(summary.eval["eval/loss"])
    moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(pure(before.params)),
                                                     jax.tree.leaves(pure(after.params)))]
    assert all(moved)  # it trained from the imported weights


def test_pcomp_imports_without_torch(tmp_path):
    """Neither the CLI nor a training run's TensorBoard writer imports torch (tensorboardX would, 4 s
    per run, where torch is installed, as it is here)."""
    import subprocess
    import sys

    code = ("import sys, pcomp, pcomp.cli, pcomp.hf; pcomp.cli.build_parser()\n"
            "from pcomp.train.metrics import MetricsWriter\n"
            f"w = MetricsWriter({str(tmp_path)!r}); w.write(1, {{'train/loss': 2.5}}); w.close()\n"
            "bad = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert any((tmp_path / "tensorboard").iterdir())  # the events file was written
