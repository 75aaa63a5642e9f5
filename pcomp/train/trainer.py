"""The training loop: stages, sharded steps, evaluation, logging, checkpoints and exact resume.

`train(cfg)` runs one or two stages (patch level then token level, `pcomp.patching.plan_stages`)
in `cfg.training.workdir`, resuming from the latest checkpoint there if one exists. Everything a
resumed run needs is in the checkpoint: parameters, optimizer state, step, rng, the grain iterator
position and which stage it was in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from pcomp.config import Config
from pcomp.data import pipeline
from pcomp.data.prepared import PreparedDataset, is_prepared
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from pcomp.errors import CheckpointError, ConfigError
from pcomp.models.sharding import batch_sharding, make_mesh
from pcomp.patching import Stage, plan_stages, relative_cost
from pcomp.train import step as steplib
from pcomp.train.checkpoint import Checkpointer, abstract_with_shardings
from pcomp.train.metrics import MetricsWriter, flops_per_position, peak_flops_per_device


def checkpoint_dir(cfg: Config) -> str:
    return cfg.training.checkpoint_dir or str(Path(cfg.training.workdir) / "checkpoints")


def maybe_initialize_distributed() -> None:
    """Multi-host (TPU pod / multi-node GPU): set PCOMP_DISTRIBUTED=1 to call jax.distributed.initialize()."""
    if os.environ.get("PCOMP_DISTRIBUTED") == "1" and jax.process_count() == 1:
        jax.distributed.initialize()


def is_main() -> bool:
    return jax.process_index() == 0


# --- run set-up ----------------------------------------------------------------------------------
@dataclasses.dataclass
class RunContext:
    cfg: Config
    workdir: Path
    mesh: Mesh
    tokenizer: Tokenizer
    graphdef: nnx.GraphDef
    param_shapes: nnx.State
    stages: list[Stage]
    streaming: bool
    train_docs: object  # streaming packer only
    eval_data: pipeline.EvalSet
    train_tokens: np.ndarray | None  # in-memory packer only

    @property
    def block_tokens(self) -> int:
        return self.cfg.training.patch_size * self.cfg.data.seq_len


def prepare_tokenizer(cfg: Config, workdir: Path, train_docs) -> Tokenizer:
    """The run's tokenizer: reuse workdir/tokenizer on resume, else build (train) and save it."""
    tok_dir = workdir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        return load_tokenizer(tok_dir)
    tokenizer = build_tokenizer(cfg.data.tokenizer, train_docs, vocab_size=cfg.data.vocab_size)
    if is_main():
        tokenizer.save(tok_dir)
    return tokenizer


def setup(cfg: Config) -> RunContext:
    cfg.validate()
    tc, dc = cfg.training, cfg.data
    workdir = Path(tc.workdir)
    mesh = make_mesh(cfg.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (tc.batch_size // tc.grad_accum) % shards:
        raise ConfigError(
            f"micro-batch training.batch_size/grad_accum={tc.batch_size // tc.grad_accum} is not divisible by "
            f"mesh data x fsdp = {shards}"
        )
    stages = plan_stages(
        token_budget=tc.tokens or tc.steps * tc.batch_size * dc.seq_len,
        batch_size=tc.batch_size,
        seq_len=dc.seq_len,
        patch_size=tc.patch_size,
        patch_fraction=tc.patch_fraction,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    streaming = dc.source.startswith("tfds:")
    train_docs = train_tokens = prepared = None
    if is_prepared(dc.source):  # tokens made by `pcomp prepare` (M2 over compressed text)
        prepared = PreparedDataset(dc.source)
        tokenizer = load_tokenizer(prepared.path / "tokenizer")
        if is_main() and not (workdir / "tokenizer").exists():
            tokenizer.save(workdir / "tokenizer")
        train_tokens, _ = prepared.stream("train")
        eval_tokens, eval_bytes = prepared.stream("eval")
        if dc.eval_max_bytes:
            raise ConfigError("data.eval_max_bytes is not supported for prepared datasets (bytes per token vary)")
    else:
        kw = dict(eval_fraction=dc.eval_fraction, text_field=dc.text_field, data_dir=dc.data_dir or None)
        train_docs = load_documents(dc.source, "train", **kw)
        tokenizer = prepare_tokenizer(cfg, workdir, train_docs)
        if not streaming:
            train_tokens = pipeline.token_stream(train_docs, tokenizer)
    if dc.bos_first and tokenizer.bos_id is None:
        raise ConfigError(f"data.bos_first needs a tokenizer with BOS; {tokenizer.name} has none")
    if prepared is not None:
        eval_data = pipeline.eval_windows(eval_tokens, dc.seq_len, eval_bytes,
                                          bos=tokenizer.bos_id if dc.bos_first else None)
    else:
        eval_data = pipeline.eval_set(load_documents(dc.source, "eval", **kw), tokenizer, dc.seq_len,
                                      dc.eval_max_bytes, bos_first=dc.bos_first)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    saved = workdir / "config.json"
    if saved.exists():
        _check_same_run(json.loads(saved.read_text()), cfg, saved)
    elif is_main():
        saved.write_text(cfg.to_json())
    graphdef, param_shapes = steplib.abstract_model(cfg.model)
    return RunContext(cfg, workdir, mesh, tokenizer, graphdef, param_shapes, stages, streaming, train_docs,
                      eval_data, train_tokens)


def _check_same_run(saved: dict, cfg: Config, path: Path) -> None:
    """Resuming with another model or data would silently mix runs: refuse."""
    for section in ("model", "data"):
        if saved.get(section) != cfg.to_dict()[section]:
            raise CheckpointError(
                f"{path} was written by a run with a different {section} config; "
                f"use another training.workdir or the same settings"
            )


def data_iterator(ctx: RunContext, stage: Stage, start: int):
    tc, dc = ctx.cfg.training, ctx.cfg.data
    common = dict(global_batch=tc.batch_size, seed=dc.seed, process_index=jax.process_index(),
                  process_count=jax.process_count(), threads=dc.read_threads)
    if ctx.streaming:
        return pipeline.streaming_iterator(ctx.train_docs, ctx.tokenizer, seq_tokens=stage.seq_tokens,
                                           start_doc=start, **common)
    return pipeline.in_memory_iterator(ctx.train_tokens, seq_tokens=stage.seq_tokens,
                                       block_tokens=ctx.block_tokens, start_block=start, **common)


def next_data_start(ctx: RunContext, stage: Stage, stage_start: int, last_doc: int) -> int:
    """Where the next stage starts reading: the first block (in memory) or the document after the
    last one any process read from (streaming) that this stage did not touch."""
    if ctx.streaming:
        return int(np.max(multihost_utils.process_allgather(np.asarray(last_doc)))) + 1
    return stage_start + stage.steps * ctx.cfg.training.batch_size * stage.seq_tokens // ctx.block_tokens


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, np.asarray(local, np.int32))


# --- evaluation ----------------------------------------------------------------------------------
def evaluate(ctx: RunContext, params, eval_fn, eval_data: pipeline.EvalSet) -> dict:
    """Token-level held-out loss, perplexity and bits per byte (total CE bits / UTF-8 bytes)."""
    sh = batch_sharding(ctx.mesh)
    nll, count = 0.0, 0.0
    pidx, pcount = jax.process_index(), jax.process_count()
    for batch in eval_data.batches(ctx.cfg.training.batch_size):
        local = {k: np.split(v, pcount)[pidx] for k, v in batch.items()}
        n, c = eval_fn(params, {k: global_batch(v, sh) for k, v in local.items()})
        nll += float(n)
        count += float(c)
    loss = nll / max(count, 1.0)
    return {
        "eval/loss": loss,
        "eval/perplexity": math.exp(min(loss, 80.0)),
        "eval/bits_per_byte": steplib.nats_to_bits_per_byte(nll, eval_data.n_bytes),
        "eval/tokens": count,
        "eval/bytes": eval_data.n_bytes,
    }


# --- the loop ------------------------------------------------------------------------------------
def train(cfg: Config, *, stop_at: int | None = None) -> dict:
    """Train (or resume) the run in cfg.training.workdir; returns a summary dict (per-stage steps,
    tokens, FLOPs and end-of-stage held-out metrics; "eval"; "relative_cost"; final "params").

    `stop_at` stops after that global step (as a preemption would) after checkpointing.
    """
    return _Run(setup(cfg), stop_at).run()


class _Run:
    """One call of `train`: the stage loop with its checkpointer, metrics writer and progress bar."""

    def __init__(self, ctx: RunContext, stop_at: int | None):
        self.ctx, self.stop_at = ctx, stop_at
        tc = ctx.cfg.training
        self.ckpt = Checkpointer(checkpoint_dir(ctx.cfg), tc.keep_checkpoints)
        self.writer = MetricsWriter(ctx.workdir, enabled=is_main())
        peak, self.peak_source = peak_flops_per_device(ctx.cfg.model.dtype)
        self.peak_total = peak * ctx.mesh.size
        self.cost = relative_cost(tc.patch_size, tc.patch_fraction if len(ctx.stages) > 1 else 0.0)
        self.offsets = np.cumsum([0] + [s.steps for s in ctx.stages]).tolist()
        self.progress = _progress(self.offsets[-1], tc.progress and is_main())
        self.summary = {"stages": [], "relative_cost": self.cost, "workdir": str(ctx.workdir), "eval": None}

    def run(self) -> dict:
        ctx, tc = self.ctx, self.ctx.cfg.training
        resume_step = self.ckpt.latest()
        meta = self.ckpt.restore_meta(resume_step) if resume_step is not None else None
        stage_index, data_start, params = 0, 0, None
        if meta is not None:
            stage_index, data_start, self.summary["stages"] = meta["stage"], meta["data_start"], meta["summaries"]
        self._log(f"pcomp: {ctx.cfg.model.name} model, {len(ctx.stages)} stage(s) "
                  + ", ".join(f"{s.name}(K={s.patch_size}, {s.steps} steps)" for s in ctx.stages)
                  + f"; relative cost {self.cost:.3f}; mesh {dict(ctx.mesh.shape)}; peak "
                  f"{self.peak_total / ctx.mesh.size:.3g} FLOP/s/device ({self.peak_source})"
                  + (f"; resuming at step {resume_step}" if meta else ""))
        with jax.set_mesh(ctx.mesh):
            while stage_index < len(ctx.stages):
                stage = ctx.stages[stage_index]
                tx, schedule = steplib.make_optimizer(tc, stage.steps, first_stage=stage_index == 0)
                shapes = jax.eval_shape(lambda: steplib.init_state(ctx.cfg.model, tx, tc.seed))
                state_sh = steplib.state_shardings(shapes, ctx.mesh)
                iterator = data_iterator(ctx, stage, data_start)
                pos = {"stage_step": 0, "last_doc": -1, "next_data_start": None}
                if meta is not None:  # resume inside (or at the end of) this stage
                    state, _ = self.ckpt.restore(resume_step, abstract_with_shardings(shapes, state_sh), iterator)
                    pos = {k: meta[k] for k in pos}
                    meta = None
                else:  # a fresh stage: new optimizer state over new or carried-over parameters
                    init = jax.jit(lambda p: steplib.init_state(ctx.cfg.model, tx, tc.seed, p), out_shardings=state_sh)
                    state = init(params)
                if pos["stage_step"] < stage.steps:
                    state, pos = self._run_stage(stage_index, state, state_sh, tx, schedule, iterator, data_start, pos)
                    if self.offsets[stage_index] + pos["stage_step"] == self.stop_at:  # as if preempted here
                        return self._close({**self.summary, "stopped_at": self.stop_at, "params": state["params"]})
                params, data_start = state["params"], pos["next_data_start"]
                stage_index += 1
        # the final model is the last stage's: its end-of-stage evaluation is the run's result
        self.summary["eval"] = {f"eval/{k[4:]}": v for k, v in self.summary["stages"][-1].items()
                                if k.startswith("end_")}
        self._log(f"pcomp: done; held-out bits/byte {self.summary['eval']['eval/bits_per_byte']:.4f}, "
                  f"loss {self.summary['eval']['eval/loss']:.4f}")
        if is_main():
            (ctx.workdir / "summary.json").write_text(json.dumps(_jsonable(self.summary), indent=2))
        return self._close({**self.summary, "params": params})

    def _close(self, result: dict) -> dict:
        self.progress.close()
        self.ckpt.wait()
        self.ckpt.close()
        self.writer.close()
        return result

    def _log(self, msg: str) -> None:
        if is_main():
            self.progress.write(msg) if not self.progress.disable else print(msg, flush=True)

    def _run_stage(self, stage_index, state, state_sh, tx, schedule, iterator, data_start, pos):
        """Steps of one stage from pos["stage_step"]; returns (state, pos) at its end or at `stop_at`."""
        ctx, cfg, tc = self.ctx, self.ctx.cfg, self.ctx.cfg.training
        stage = ctx.stages[stage_index]
        step_fn = steplib.jit_train_step(ctx.graphdef, tx, schedule, state_sh, ctx.mesh,
                                         patch_size=stage.patch_size, z_loss=tc.z_loss, grad_accum=tc.grad_accum)
        eval_fn = steplib.jit_eval_step(ctx.graphdef, state_sh["params"], ctx.mesh)
        sh = batch_sharding(ctx.mesh)
        flops_step = tc.batch_size * cfg.data.seq_len * flops_per_position(cfg.model, cfg.data.seq_len)
        tokens_step = tc.batch_size * stage.seq_tokens
        tokens_before = sum(s.tokens(tc.batch_size) for s in ctx.stages[:stage_index])
        loss_key = "train/patch_loss" if stage.patch_size > 1 else "train/loss"
        stats = {"name": stage.name, "patch_size": stage.patch_size, "steps": stage.steps,
                 "tokens": stage.tokens(tc.batch_size), "flops": flops_step * stage.steps}
        if len(self.summary["stages"]) <= stage_index:
            self.summary["stages"].append(stats)
        bos = ctx.tokenizer.bos_id if cfg.data.bos_first else None
        mask_g = global_batch(np.ones((tc.batch_size // jax.process_count(), stage.seq_tokens), np.int32), sh)
        stage_step, last_doc, next_start = pos["stage_step"], pos["last_doc"], pos["next_data_start"]
        t_last, steps_since = None, 0
        self.progress.set_description(stage.name)
        self.progress.update(self.offsets[stage_index] + stage_step - self.progress.n)
        while stage_step < stage.steps:
            local = next(iterator)
            if isinstance(local, dict):  # streaming: tokens and their document positions
                last_doc = max(last_doc, int(local["doc"].max()))
                local = local["tokens"]
            if bos is not None:
                local = np.array(local)
                local[:, 0] = bos
            state, metrics = step_fn(state, {"tokens": global_batch(local, sh), "mask": mask_g})
            stage_step += 1
            steps_since += 1
            gstep = self.offsets[stage_index] + stage_step
            self.progress.update(1)
            end = stage_step == stage.steps
            if stage_step == 1 or stage_step % tc.log_every == 0 or end:
                m = jax.device_get(metrics)
                now = time.perf_counter()
                scalars = {loss_key: m["loss"], "train/lr": m["lr"], "train/grad_norm": m["grad_norm"],
                           "train/stage": stage_index, "train/tokens_seen": tokens_before + stage_step * tokens_step}
                if t_last is not None:  # the first logged step includes compilation
                    dt = (now - t_last) / steps_since
                    scalars.update({"perf/step_time_s": dt, "perf/tokens_per_s": tokens_step / dt,
                                    "perf/model_flops_per_s": flops_step / dt,
                                    "perf/mfu": flops_step / dt / self.peak_total})
                t_last, steps_since = now, 0
                self.writer.write(gstep, scalars)
                self.progress.set_postfix(loss=f"{float(m['loss']):.3f}", mfu=f"{scalars.get('perf/mfu', 0):.0%}",
                                          refresh=False)
            if tc.eval_every and stage_step % tc.eval_every == 0 and not end:
                self.writer.write(gstep, evaluate(ctx, state["params"], eval_fn, ctx.eval_data))
            if end:
                stage_eval = evaluate(ctx, state["params"], eval_fn, ctx.eval_data)
                stats.update({f"end_{k.split('/')[1]}": v for k, v in stage_eval.items()})
                self.summary["stages"][stage_index] = stats
                self.writer.write(gstep, stage_eval)
                next_start = next_data_start(ctx, stage, data_start, last_doc)
                self._log(f"pcomp: stage {stage.name} done: {stage.steps} steps, {stats['tokens']:,} tokens, "
                          f"{stats['flops']:.3e} FLOPs; held-out bits/byte {stage_eval['eval/bits_per_byte']:.4f}")
            if end or stage_step % tc.checkpoint_every == 0 or gstep == self.stop_at:
                meta = {"stage": stage_index, "stage_step": stage_step, "global_step": gstep,
                        "data_start": data_start, "next_data_start": next_start, "last_doc": last_doc,
                        "summaries": self.summary["stages"]}
                self.ckpt.save(gstep, state, iterator, meta)
            if gstep == self.stop_at:
                break
        return state, {"stage_step": stage_step, "last_doc": last_doc, "next_data_start": next_start}


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, dynamic_ncols=True, unit="step")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "params"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
