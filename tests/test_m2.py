"""M2 over compressed tokens: the paper's accounting (`pcomp.train.evaluation`) and generation through M1
(`pcomp.compress.generate`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pcomp.config import Config, MeshConfig
from pcomp.data import pipeline
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.models.sharding import make_mesh
from pcomp.models.transformer import Transformer
from pcomp.train.evaluation import Accounting, account, evaluate, nll_bits, non_embedding_params, unigram_bits
from pcomp.train.load import TrainedModel
from pcomp.train.step import build_program


def random_run(vocab: int, *, uniform: bool, seq_len: int = 32, seed: int = 0) -> TrainedModel:
    """An untrained test-tiny M2 over `vocab` ids built in-process; `uniform` zeroes its LM head, so
    every logit is exactly 0 and the model outputs the uniform distribution."""
    cfg = Config.preset("test-tiny").override(f"model.vocab_size={vocab}", "model.tie_embeddings=false",
                                              f"data.seq_len={seq_len}")
    model = Transformer(cfg.model, nnx.Rngs(params=seed))
    if uniform:
        model.lm_head[...] = jnp.zeros_like(model.lm_head[...])
    graphdef, params = nnx.split(model)
    return TrainedModel(cfg, ByteTokenizer(), graphdef, params, 0, Path("."))


def _eval_set(vocab: int, n_tokens: int, n_bytes: int, seq_len: int = 32, seed: int = 1) -> pipeline.EvalSet:
    stream = np.random.default_rng(seed).integers(0, vocab, n_tokens)
    return pipeline.eval_windows(stream, seq_len, n_bytes)


# ----------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("token_bits", [8, 16])
def test_uniform_model_reads_exactly_token_bits_times_tokens_per_byte(token_bits):
    vocab = 1 << token_bits
    run = random_run(vocab, uniform=True)
    n_tokens, n_bytes = 301, 997  # odd sizes: the last window is padded and masked
    data = _eval_set(vocab, n_tokens, n_bytes)
    acc = account(run, data, np.arange(vocab), batch_size=4)
    assert acc.n_tokens == n_tokens - 1  # every token but the first is scored once
    expected = token_bits * (n_tokens - 1) / n_bytes
    assert acc.bits_per_byte == pytest.approx(expected, rel=1e-9, abs=0)
    assert acc.uniform_bits_per_byte == pytest.approx(expected, rel=1e-9, abs=0)
    assert acc.bytes_per_token == pytest.approx(n_bytes / (n_tokens - 1), rel=1e-12)


def test_nll_matches_the_trainers_evaluation_on_a_random_model():
    """`pcomp eval`'s float64 scorer and the trainer's jitted eval step (float32 sums on the device),
    both through the one evaluation loop, agree on a random model."""
    run = random_run(256, uniform=False, seed=3)
    data = _eval_set(256, 200, 500)
    bits, count = nll_bits(run, data, batch_size=4)
    mesh = make_mesh(MeshConfig(), jax.local_devices()[:1])
    program = build_program(run.cfg.model, run.cfg.training, mesh, steps=1)
    ref = evaluate(program.eval, jax.device_put(run.params, program.state_sharding["params"]), data, 4, mesh)
    assert count == ref["eval/tokens"] == 199
    assert bits / 500 == pytest.approx(ref["eval/bits_per_byte"], rel=1e-5)
    assert abs(bits / 500 - 8 * 199 / 500) > 1e-3  # a random head is not uniform: the check can fail


def _naive_unigram_bits(train, targets, vocab):
    counts = {}
    for t in train:
        counts[int(t)] = counts.get(int(t), 0) + 1
    total = 0.0
    for t in targets:
        total -= math.log2((counts.get(int(t), 0) + 1) / (len(train) + vocab))
    return total


@pytest.mark.parametrize("vocab, seed", [(256, 0), (65536, 1), (7, 2)])
def test_unigram_bits_match_a_naive_loop(vocab, seed):
    rng = np.random.default_rng(seed)
    train = rng.zipf(1.5, 500) % vocab
    targets = rng.zipf(1.3, 300) % vocab
    assert unigram_bits(train, targets, vocab) == pytest.approx(_naive_unigram_bits(train, targets, vocab), rel=1e-12)


def test_unigram_in_account_is_fitted_on_the_train_tokens_given():
    vocab = 256
    run = random_run(vocab, uniform=True)
    data = _eval_set(vocab, 100, 250)
    train = np.random.default_rng(5).integers(0, 16, 1000)  # skewed: only ids < 16
    acc = account(run, data, train, batch_size=4)
    targets = data.tokens[:, 1:][data.mask[:, 1:].astype(bool)]
    assert acc.unigram_bits_per_byte == pytest.approx(_naive_unigram_bits(train, targets, vocab) / 250, rel=1e-12)


def test_flops_per_byte_counts_m2_per_token_and_m1_per_byte():
    cfg = Config.preset("test-tiny").model
    n = non_embedding_params(cfg)
    d, f, layers = cfg.d_model, cfg.d_ff, cfg.n_layers
    h = cfg.n_heads * cfg.head_dim
    kv = cfg.kv_heads * cfg.head_dim
    assert n == layers * (2 * d * h + 2 * d * kv + 3 * d * f + 2 * d) + d  # attention, MLP, norms
    acc = Accounting(n_bytes=1000, n_tokens=250, vocab_size=256, nll_bits=1.0, unigram_bits=1.0, n_m2=n, n_m1=0)
    assert acc.flops_per_byte == pytest.approx(2 * n * 250 / 1000)
    with_m1 = Accounting(n_bytes=1000, n_tokens=250, vocab_size=256, nll_bits=1.0, unigram_bits=1.0, n_m2=n,
                         n_m1=12345)
    assert with_m1.flops_per_byte == pytest.approx(2 * n * 250 / 1000 + 2 * 12345)


def test_combined_accounting_adds_bits_bytes_and_tokens():
    parts = [Accounting(n_bytes=1000, n_tokens=250, vocab_size=256, nll_bits=2000.0, unigram_bits=4000.0, n_m2=7,
                        n_m1=0),
             Accounting(n_bytes=3000, n_tokens=1001, vocab_size=256, nll_bits=3000.0, unigram_bits=9000.0, n_m2=7,
                        n_m1=0)]
    total = Accounting.combine(parts)
    assert (total.n_bytes, total.n_tokens, total.nll_bits, total.unigram_bits) == (4000, 1251, 5000.0, 13000.0)
    assert total.bits_per_byte == 1.25  # (2000 + 3000) / 4000: the byte-weighted mean, not the mean of 2 and 1
    no_reference = Accounting.combine([parts[0], dataclasses.replace(parts[1], unigram_bits=None)])
    assert no_reference.unigram_bits is None and no_reference.unigram_bits_per_byte is None
    assert "unigram n/a" in no_reference.summary() and no_reference.to_dict()["unigram_bits_per_byte"] is None


# ----------------------------------------------------------------------------- generation through M1
@pytest.fixture(scope="module")
def eq_tok(m1_run):
    from pcomp.compress.tokenizers import EqualInfoTokenizer

    return EqualInfoTokenizer(m1_run, 16, 8, batch=16)


def _bad_window_code(tok) -> int:
    """A 16-bit code no text encodes to under the unique-prefix rule (most random codes, with a tiny M1)."""
    from pcomp.compress.windows import decode_windows
    from pcomp.errors import CompressedFormatError

    for code in np.random.default_rng(0).integers(0, 1 << 16, 50):
        try:
            decode_windows(tok.m1, np.asarray([code], np.uint64), 16)
        except CompressedFormatError:
            return int(code)
    raise AssertionError("no undecodable window among 50 random codes")


@pytest.mark.slow
def test_prompt_round_trips_through_compress_tokens_decode(eq_tok):
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé too.".encode()
    ids = eq_tok.prompt_ids(text)
    assert len(ids) % 2 == 0 and len(ids) >= 4  # whole windows of b/N = 2 tokens
    dec = eq_tok.token_decoder()
    assert b"".join(dec.feed(t) for t in ids) == text
    assert dec.skipped == [] and dec.windows == len(ids) // 2


@pytest.mark.slow
def test_a_window_no_text_encodes_to_is_reported_once_and_skipped(eq_tok):
    from pcomp.compress.packing import codes_to_tokens

    first, second = eq_tok.prompt_ids(b"Hello"), eq_tok.prompt_ids(b" world")
    bad = codes_to_tokens(np.asarray([_bad_window_code(eq_tok)], np.uint64), 16, 8)
    calls = []
    dec = eq_tok.token_decoder(calls.append)
    out = b"".join(dec.feed(t) for t in [*first, *bad, *second])
    assert out == b"Hello world"
    assert dec.skipped == [len(first) // 2] and len(calls) == 1
    assert f"sampled window {len(first) // 2} " in calls[0] and "does not decode" in calls[0]


@pytest.mark.slow
def test_random_m2_streams_decode_or_skip_whole_windows(eq_tok):
    from pcomp.compress.generate import generate_text
    from pcomp.compress.windows import decode_windows
    from pcomp.errors import CompressedFormatError
    from pcomp.models.generate import generate

    base = random_run(256, uniform=False, seed=7)
    run = TrainedModel(base.cfg, eq_tok, base.graphdef, base.params, 0, Path("."))
    prompt = b"The "
    for seed in range(3):
        chunks, skips = [], []
        out, dec = generate_text(run, prompt, max_tokens=9, temperature=1.0, top_k=0, seed=seed,  # 5 windows
                                 on_bytes=chunks.append, on_warning=skips.append, echo_prompt=True)
        assert chunks[0] == prompt and b"".join(chunks[1:]) == out
        assert dec.windows == 5 and len(dec.skipped) == len(skips)  # each skipped window reported once
        assert all(f"sampled window {i} " in why for i, why in zip(dec.skipped, skips))
        # independently: the same samples, each window decoded alone
        ids = eq_tok.prompt_ids(prompt)
        sampled = generate(run.graphdef, run.params, ids, max_new_tokens=10, max_len=run.cfg.model.max_seq_len,
                           temperature=1.0, top_k=0, seed=seed)
        expect, bad = b"", []
        for w in range(5):
            code = (np.uint64(sampled[2 * w]) << np.uint64(8)) | np.uint64(sampled[2 * w + 1])
            try:
                expect += decode_windows(eq_tok.m1, np.asarray([code], np.uint64), 16)[0]
            except CompressedFormatError:
                bad.append(w)
        assert out == expect and dec.skipped == bad


@pytest.mark.slow
def test_a_moved_tokenizer_decodes_without_the_m1_it_recorded(m1_run, tmp_path):
    import shutil

    from pcomp.compress.tokenizers import EqualInfoTokenizer
    from pcomp.data.tokenizers import load_tokenizer
    from pcomp.errors import CheckpointError

    m1 = tmp_path / "m1"
    shutil.copytree(m1_run, m1)
    tok = EqualInfoTokenizer(m1, 16, 8, batch=16)
    text = b"a run directory moved elsewhere still decodes"
    ids = tok.encode(text)
    tok.save(tmp_path / "a" / "run" / "tokenizer")
    shutil.rmtree(m1)  # the M1 it recorded by absolute path is gone
    moved = tmp_path / "b" / "run"
    shutil.move(tmp_path / "a" / "run", moved)
    loaded = load_tokenizer(moved / "tokenizer")
    assert loaded.to_config() == tok.to_config()  # same identity (M1 path as recorded, fingerprint)
    assert loaded.m1_dir == str((moved / "tokenizer" / "m1").absolute())
    assert loaded.decode(ids) == text
    # the copy is fingerprint-checked: another M1's checkpoint in its place is refused
    tampered = tmp_path / "c" / "run"
    shutil.copytree(moved, tampered)
    ckpts = tampered / "tokenizer" / "m1" / "checkpoints"
    shutil.rmtree(ckpts / "20")
    shutil.copytree(m1_run / "checkpoints" / "10", ckpts / "10")
    with pytest.raises(CheckpointError, match="is not the M1 this tokenizer was made with"):
        load_tokenizer(tampered / "tokenizer").decode(ids)
