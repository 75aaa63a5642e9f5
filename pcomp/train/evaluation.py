"""Held-out evaluation, one loop for everything: the trainer's metrics and `pcomp eval`'s accounting.

Bits per byte = total cross-entropy bits of the held-out token stream / its UTF-8 bytes (every
token but the first scored exactly once; see `pcomp.data.pipeline.eval_windows`). `nll_sums` is the
loop; the trainer runs it with its sharded, jitted eval step (`evaluate`), a loaded run on one device
with float64 sums (`nll_bits`, `account`, `score_text`).

The accounting of the Equal-Info paper sits on top of that loop (`Accounting`):
What a trained LM over (compressed) tokens is worth per original UTF-8 byte: the paper's accounting.

For a held-out token stream of T scored tokens (every token but the first) encoding B bytes, with
vocabulary V:
    bits/byte          total model cross-entropy bits / B (scored on one device, the per-position
                       log-normaliser in float32 and the sum in float64, so a model that outputs the
                       uniform distribution reads exactly log2(V) * T / B)
    uniform bits/byte  log2(V) * T / B: what a model that learned nothing pays (the paper's token bits
                       x tokens/byte for V = 2**N)
    unigram bits/byte  -sum log2 p(t) / B over the held-out targets, p the unigram distribution of the
                       TRAIN split's tokens of the same dataset and tokenizer with add-one (Laplace)
                       smoothing over the V ids: p(t) = (count(t) + 1) / (n_train + V). For text
                       from elsewhere (`pcomp eval --data FILE`) the TRAIN split is the run's own
                       (`run_train_tokens`): the data the model learned from, so the unigram model
                       learned from the same text and is never fitted on the bytes it scores.
    bytes/token        B / T
    inference FLOPs/byte  2 N(M2) / (bytes/token), plus 2 N(M1) for tokenizers that run M1 once per
                       byte (arith, equal_info). N counts non-embedding parameters (the matmul weights,
                       norms included, embedding table and LM head excluded: `count_params(embeddings=
                       False)`), the usual 2N-FLOPs-per-token convention; attention over the context is
                       not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pcomp.config import Config, MeshConfig
from pcomp.data.pipeline import EvalSet, eval_set, eval_windows
from pcomp.data.prepared import PreparedDataset, is_prepared
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import Tokenizer
from pcomp.models.sharding import batch_sharding, make_mesh
from pcomp.models.transformer import count_params
from pcomp.train.load import TrainedModel, check_prepared_tokenizer


def nats_to_bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / max(n_bytes, 1)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of a batch as one global array sharded over the mesh's batch axes."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local, np.int32))


def nll_sums(eval_fn, params, eval_data: EvalSet, batch_size: int, mesh: Mesh) -> tuple[float, float]:
    """The evaluation loop: `eval_fn(params, batch) -> (summed nll, target count)` over every batch of
    `eval_data`, summed in float64; (total nll in nats, targets).

    Each process feeds its share of the rows when the mesh spans several processes."""
    processes = sorted({d.process_index for d in mesh.devices.flat})
    pidx = processes.index(jax.process_index())
    nll = count = 0.0
    for batch in eval_data.batches(batch_size):
        local = {k: np.split(v, len(processes))[pidx] for k, v in batch.items()}
        n, c = eval_fn(params, {k: global_batch(v, mesh) for k, v in local.items()})
        nll, count = nll + float(n), count + float(c)
    return nll, count


def metrics(nll: float, count: float, n_bytes: int) -> dict:
    """The trainer's held-out metrics of a summed NLL (nats) over `count` targets encoding `n_bytes`."""
    loss = nll / max(count, 1.0)
    return {
        "eval/loss": loss,
        "eval/perplexity": math.exp(min(loss, 80.0)),
        "eval/bits_per_byte": nats_to_bits_per_byte(nll, n_bytes),
        "eval/tokens": count,
        "eval/bytes": n_bytes,
    }


def evaluate(eval_fn, params, eval_data: EvalSet, batch_size: int, mesh: Mesh) -> dict:
    """`metrics` of `nll_sums` (the trainer's evaluation, with its sharded eval step)."""
    return metrics(*nll_sums(eval_fn, params, eval_data, batch_size, mesh), eval_data.n_bytes)


# --- the accounting of a loaded run (`pcomp eval`) ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Accounting:
    """One run's held-out numbers (see the module docstring)."""

    n_bytes: int
    n_tokens: int  # scored targets
    vocab_size: int
    nll_bits: float  # the model's total cross-entropy, bits
    unigram_bits: float | None  # the train-split unigram model's total cross-entropy, bits (None: no train split)
    n_m2: int  # non-embedding parameters of the model
    n_m1: int  # non-embedding parameters of the M1 the tokenizer runs (0: none)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_bits / self.n_bytes

    @property
    def token_bits(self) -> float:
        return math.log2(self.vocab_size)

    @property
    def uniform_bits_per_byte(self) -> float:
        return self.token_bits * self.n_tokens / self.n_bytes

    @property
    def unigram_bits_per_byte(self) -> float | None:
        return None if self.unigram_bits is None else self.unigram_bits / self.n_bytes

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / self.n_tokens

    @property
    def flops_per_byte(self) -> float:
        return 2 * self.n_m2 / self.bytes_per_token + 2 * self.n_m1

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for k in ("bits_per_byte", "token_bits", "uniform_bits_per_byte", "unigram_bits_per_byte",
                  "bytes_per_token", "flops_per_byte"):
            out[k] = getattr(self, k)
        return out

    @classmethod
    def combine(cls, parts: "list[Accounting]") -> "Accounting":
        """The accounting of several separately scored texts as one: bits, bytes and tokens add up, so
        the total bits/byte is the byte-weighted mean of the parts'. All parts come from one run."""
        first = parts[0]
        unigram = [p.unigram_bits for p in parts]
        return cls(n_bytes=sum(p.n_bytes for p in parts), n_tokens=sum(p.n_tokens for p in parts),
                   vocab_size=first.vocab_size, nll_bits=sum(p.nll_bits for p in parts),
                   unigram_bits=None if None in unigram else sum(unigram), n_m2=first.n_m2, n_m1=first.n_m1)

    def summary(self) -> str:
        m1 = f" + 2*N(M1)={2 * self.n_m1:,}" if self.n_m1 else ""
        unigram = ("unigram n/a, no train split to count" if self.unigram_bits is None else
                   f"unigram {self.unigram_bits_per_byte:.4f}, train-split counts, add-one smoothing")
        return (f"{self.n_bytes} bytes, {self.n_tokens} tokens ({self.bytes_per_token:.4f} bytes/token)\n"
                f"  bits/byte {self.bits_per_byte:.4f}  (uniform {self.uniform_bits_per_byte:.4f} = "
                f"{self.token_bits:g} token bits x {1 / self.bytes_per_token:.4f} tokens/byte; "
                f"{unigram})\n"
                f"  inference FLOPs/byte {self.flops_per_byte:,.0f}  (2*N(M2)={2 * self.n_m2:,} / bytes/token{m1}; "
                f"N = non-embedding parameters)")


@functools.partial(jax.jit, static_argnums=0)
def _position_terms(graphdef, params, tokens_bt):
    """Per position: (sum_v exp(logit_v - max), target logit - max) in float32 [B, T-1]; the host takes
    log and sums in float64, so a uniform model's loss is exactly log(V) per token."""
    logits_btv = nnx.merge(graphdef, params)(tokens_bt)[:, :-1]
    shifted = logits_btv - jnp.max(logits_btv, axis=-1, keepdims=True)
    sum_exp = jnp.sum(jnp.exp(shifted), axis=-1)
    target = jnp.take_along_axis(shifted, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    return sum_exp, target


def exact_eval_fn(graphdef):
    """An `eval_fn` for `nll_sums` on one device that sums in float64 on the host: (summed NLL in nats,
    target count) of a batch, exact enough that a uniform model reads log(V) per token to the last bit."""

    def eval_fn(params, batch):
        sum_exp, target = (np.asarray(a, np.float64) for a in _position_terms(graphdef, params, batch["tokens"]))
        valid = np.asarray(batch["mask"])[:, 1:].astype(bool)
        return float(np.sum((np.log(sum_exp) - target)[valid])), int(valid.sum())

    return eval_fn


def nll_bits(run: TrainedModel, data: EvalSet, batch_size: int = 16) -> tuple[float, int]:
    """(total cross-entropy in bits, scored targets) of `run` on `data`, on the first local device,
    through the one evaluation loop (`nll_sums`) with float64 sums (`exact_eval_fn`)."""
    mesh = make_mesh(MeshConfig(), jax.local_devices()[:1])
    params = jax.device_put(run.params, jax.local_devices()[0])
    nll, count = nll_sums(exact_eval_fn(run.graphdef), params, data, batch_size, mesh)
    return nll / math.log(2), int(count)


def unigram_bits(train_tokens, targets: np.ndarray, vocab_size: int, chunk: int = 1 << 22) -> float:
    """Total bits of `targets` under the add-one-smoothed unigram distribution of `train_tokens` (an
    array, or any sequence with len() and slices, e.g. a prepared split's lazy `RecordTokens`, counted
    `chunk` tokens at a time)."""
    counts = np.zeros(vocab_size, np.float64)
    n = len(train_tokens)
    for a in range(0, n, chunk):
        counts += np.bincount(np.asarray(train_tokens[a : a + chunk], np.int64).ravel(), minlength=vocab_size)
    logp = np.log2(counts + 1.0) - math.log2(n + vocab_size)
    return float(-logp[np.asarray(targets, np.int64)].sum())


def non_embedding_params(cfg) -> int:
    """N of a `ModelConfig`: every parameter but the embedding table and the LM head."""
    return count_params(cfg, embeddings=False)


def m1_params(tokenizer: Tokenizer) -> int:
    """N(M1) of a tokenizer that runs M1 per byte (arith, equal_info), read from M1's config; else 0."""
    path = getattr(tokenizer, "m1_dir", None)
    if path is None:
        return 0
    return non_embedding_params(Config.load(str(Path(path) / "config.json")).model)


def account(run: TrainedModel, data: EvalSet, train_tokens, batch_size: int = 16) -> Accounting:
    """The accounting of `run` on `data` (an `EvalSet`), the unigram fitted on `train_tokens` (None: no
    unigram reference)."""
    bits, count = nll_bits(run, data, batch_size)
    valid = data.mask[:, 1:].astype(bool)
    targets = data.tokens[:, 1:][valid]
    vocab = run.cfg.model.vocab_size
    unigram = None if train_tokens is None else unigram_bits(train_tokens, targets, vocab)
    return Accounting(n_bytes=data.n_bytes, n_tokens=count, vocab_size=vocab, nll_bits=bits, unigram_bits=unigram,
                      n_m2=non_embedding_params(run.cfg.model), n_m1=m1_params(run.tokenizer))


def score_text(run: TrainedModel, docs, max_bytes: int = 0, batch_size: int = 16) -> dict:
    """Held-out loss, perplexity, bits/byte, tokens and bytes of `run` on text `docs` (windowed as the
    run was trained), keys as the trainer's without the "eval/" prefix: `account_text` without a
    unigram reference."""
    acc = account_text(run, docs, None, max_bytes, batch_size)
    nll = acc.nll_bits * math.log(2)
    return {k.removeprefix("eval/"): v for k, v in metrics(nll, acc.n_tokens, acc.n_bytes).items()}


def account_prepared(run: TrainedModel, path, split: str = "eval", batch_size: int = 16) -> Accounting:
    """`account` on a `pcomp prepare` dataset's `split`, the unigram fitted on its train split; the
    dataset must have been made with the run's tokenizer."""
    prepared = PreparedDataset(path)
    check_prepared_tokenizer(run, prepared)
    tokens, n_bytes = prepared.stream(split)
    bos = run.tokenizer.bos_id if run.cfg.data.bos_first else None
    data = eval_windows(tokens, run.cfg.data.seq_len, n_bytes, bos=bos)
    train_tokens = tokens if split == "train" else prepared.tokens("train")  # read lazily, shard by shard
    return account(run, data, train_tokens, batch_size)


def account_text(run: TrainedModel, eval_docs, train_tokens, max_bytes: int = 0, batch_size: int = 16) -> Accounting:
    """`account` on text documents tokenized by the run's tokenizer (every token of their stream but
    the first scored once, `eval_set`), the unigram fitted on `train_tokens`: `text_tokens` of
    a train split, usually `run_train_tokens(run)`; None for no unigram reference."""
    data = eval_set(eval_docs, run.tokenizer, run.cfg.data.seq_len, max_bytes,
                             bos_first=run.cfg.data.bos_first)
    return account(run, data, train_tokens, batch_size)


def text_tokens(run: TrainedModel, docs) -> np.ndarray:
    """Documents in the run's tokens, concatenated without BOS/EOS: what the unigram model counts."""
    parts = [np.asarray(run.tokenizer.encode(d), np.int64) for d in docs]
    return np.concatenate(parts + [np.zeros(0, np.int64)])


def run_train_tokens(run: TrainedModel, data_cfg=None):
    """The run's own training split in its tokens: the unigram reference for any text the run is scored
    on, since the model learned from exactly these. A prepared dataset's train tokens are read lazily;
    a text source is loaded with the run's cut (`data.eval_fraction`) and tokenized. `data_cfg` (default
    the run's `data` section) may say where to read the same source on this machine (`data_dir`)."""
    dc = data_cfg or run.cfg.data
    if is_prepared(dc.source):
        return PreparedDataset(dc.source).tokens("train")
    docs = load_documents(dc.source, "train", eval_fraction=run.cfg.data.eval_fraction, text_field=dc.text_field,
                          data_dir=dc.data_dir or None)
    return text_tokens(run, docs)
