"""The training loop: stages, sharded steps, evaluation, logging, checkpoints and exact resume.

`train(cfg)` runs one or two stages (patch level then token level, `pcomp.patching.plan_stages`)
in `cfg.training.workdir`, resuming from the latest checkpoint there if one exists. Everything a
resumed run needs is in the checkpoint: parameters, optimizer state, step, the grain iterator
position and which stage it was in.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from pcomp.config import Config
from pcomp.data.run_data import RunData, vocab_size_before_reading
from pcomp.errors import CheckpointError, ConfigError, DivergenceError, PathError, PcompError, os_error
from pcomp.models.sharding import make_mesh
from pcomp.output import write_file
from pcomp.patching import Stage, plan_stages, relative_cost
from pcomp.train import memory
from pcomp.train.checkpoint import Checkpointer
from pcomp.train.evaluation import evaluate, global_batch
from pcomp.train.lock import WorkdirLock
from pcomp.train.metrics import MetricsWriter, flops_per_position, peak_flops_per_device
from pcomp.train.profiling import StepProfiler
from pcomp.train.signals import StopSignals
from pcomp.train.step import CompiledStep, TrainProgram, build_program


def checkpoint_dir(cfg: Config) -> str:
    return cfg.training.checkpoint_dir or str(Path(cfg.training.workdir) / "checkpoints")


def is_main() -> bool:
    return jax.process_index() == 0


# --- run set-up ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StageProgram:
    """One stage's program and its train step, compiled ahead of time for the stage's batch shape.

    The run nouns: `RunContext` = a run as set up (config, directory, mesh, data, stages) before any
    step; `StageProgram` = one stage of it compiled; `_Run` = one call of `train` executing them;
    `TrainResult` = what that call returns; `pcomp.train.load.TrainedModel` = a finished run's
    checkpoint loaded for use (eval, generation, M1). Below them, `pcomp.train.step.TrainProgram`
    (a stage's jitted functions) and `CompiledStep` (its step for one batch shape); `RunData`
    (`pcomp.data.run_data`) is a run's batches."""

    program: TrainProgram
    step: CompiledStep


@dataclasses.dataclass
class RunContext:
    """A run as set up, before its first step: what `train` executes and `pcomp compile` compiles."""

    cfg: Config  # with model.vocab_size set from the data
    workdir: Path
    mesh: Mesh
    data: RunData
    stages: list[Stage]
    programs: list[StageProgram] | None  # one per stage (None: set up without compiling)


def stage_label(cfg: Config, stage: Stage) -> str:
    """How logs and errors name a stage's step: "the token step of model 125m (batch 256 x 1024 tokens,
    model.remat=full)"."""
    return (f"the {stage.name} step of model {cfg.model.name} (batch {cfg.training.batch_size} x "
            f"{stage.seq_tokens} tokens, model.remat={cfg.model.remat})")


def compile_stage(cfg: Config, mesh: Mesh, stages: list[Stage], index: int) -> StageProgram:
    """Stage `index`'s program on `mesh` and its train step compiled ahead of time for the stage's
    global batch (`TrainProgram.compile_step`); nothing is allocated, so `mesh` may be made of devices
    that are not there (a TPU topology compiled on a CPU machine: `pcomp.train.aot`). A step the compiler
    itself refuses for want of device memory is the one-line ConfigError `memory.out_of_memory`."""
    stage = stages[index]
    program = build_program(cfg.model, cfg.training, mesh, steps=stage.steps, patch_size=stage.patch_size,
                            first_stage=index == 0)
    try:
        step = program.compile_step(cfg.training.batch_size, stage.seq_tokens)
    except jax.errors.JaxRuntimeError as e:
        error = memory.out_of_memory(e, stage_label(cfg, stage))
        if error is None:
            raise
        raise error from None
    return StageProgram(program, step)


def compile_stages(cfg: Config, mesh: Mesh, stages: list[Stage]) -> list[StageProgram]:
    """Build and compile every stage's train step before step 1 (`compile_stage`), log the compile
    seconds and the per-device memory against the device's, and raise a one-line ConfigError for a
    stage that cannot fit (`memory.check_fits`), before anything runs."""
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    available = memory.device_memory_bytes(device)
    out = []
    for i, stage in enumerate(stages):
        compiled = compile_stage(cfg, mesh, stages, i)
        where = f"of {memory.gib(available)} on {device.platform}" if available else \
            f"({device.platform} reports no memory limit)"
        use = compiled.step.memory.describe() if compiled.step.memory else "no memory analysis"
        _print(f"pcomp: compiled the {stage.name} step ({cfg.model.name}, batch {cfg.training.batch_size} x "
               f"{stage.seq_tokens} tokens, model.remat={cfg.model.remat}) in {compiled.step.seconds:.1f} s; "
               f"{use} {where}")
        memory.check_fits(compiled.step.memory, available, stage_label(cfg, stage))
        out.append(compiled)
    return out


def plan_run(cfg: Config, devices=None, *, check_data: bool = True) -> tuple[Config, Mesh, list[Stage]]:
    """What a run compiles, known before any data is read: the config with the model's vocabulary
    (`vocab_size_before_reading`), the mesh over all (or the given) devices, and the stages. A mesh
    that does not fit the devices or the model, or a micro-batch the mesh does not divide, is a
    one-line ConfigError; a missing local data source a DataError (unless `check_data` is False: a
    compile without the data, `pcomp.train.aot`)."""
    cfg.validate()
    tc, dc = cfg.training, cfg.data
    mesh = make_mesh(cfg.mesh, devices, model=cfg.model)
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
    vocab = vocab_size_before_reading(dc, Path(tc.workdir) / "tokenizer", check_source_exists=check_data)
    return _with_vocab(cfg, vocab), mesh, stages


def setup(cfg: Config, *, compile_steps: bool = True) -> RunContext:
    """Validate and plan the run (`plan_run`), compile every stage's step and check it fits the device's
    memory (`compile_stages`, before any data is read; skipped with `compile_steps=False`), read the data;
    `config.json` and the tokenizer are written only once all of that succeeded (a failed set-up
    leaves nothing a later run could pick up)."""
    planned, mesh, stages = plan_run(cfg)
    tc, dc = cfg.training, cfg.data
    workdir = Path(tc.workdir)
    vocab = planned.model.vocab_size
    saved = workdir / "config.json"
    if saved.exists():  # a resume with other settings fails before compiling
        _check_same_run(json.loads(saved.read_text()), planned, saved)
    programs = compile_stages(planned, mesh, stages) if compile_steps else None
    data = RunData.load(dc, saved_tokenizer=workdir / "tokenizer", global_batch=tc.batch_size,
                        block_tokens=tc.patch_size * dc.seq_len)
    if programs is not None and data.vocab_size != vocab:  # a SentencePiece vocabulary came out smaller
        programs = compile_stages(_with_vocab(cfg, data.vocab_size), mesh, stages)
    cfg = _with_vocab(cfg, data.vocab_size)
    if is_main():
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "tokenizer" / "tokenizer.json").exists():
            data.save_tokenizer(workdir / "tokenizer")
        if not saved.exists():
            saved.write_text(cfg.to_json())
    return RunContext(cfg, workdir, mesh, data, stages, programs)


def _with_vocab(cfg: Config, vocab_size: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


def _print(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


# Settings a resumed run may change: they do not touch the trajectory. model.remat trades memory for
# compute (the same model); model.scan_unroll changes how the layer loop is compiled, not what it
# computes; grad_accum splits the same batch into micro-batches, so a run can resume on a machine with
# less memory.
RESUME_MAY_CHANGE = {
    "model": frozenset({"remat", "scan_unroll"}),
    "training": frozenset({"grad_accum", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                           "workdir", "checkpoint_dir", "progress", "profile_steps"}),
}


def _check_same_run(saved: dict, cfg: Config, path: Path) -> None:
    """Resuming with another model, data or schedule (steps, lr, seed, ...) would silently mix runs:
    refuse, naming the first difference. What may change is in RESUME_MAY_CHANGE."""
    want, defaults = cfg.to_dict(), Config().to_dict()
    for section in ("model", "data", "training"):
        # a key the saved config lacks was added to pcomp later: the run used its default
        old, new = {**defaults[section], **saved.get(section, {})}, want[section]
        for key in sorted((set(old) | set(new)) - RESUME_MAY_CHANGE.get(section, frozenset())):
            if old.get(key) != new.get(key):
                raise CheckpointError(
                    f"{path} was written by a run with {section}.{key}={old.get(key)!r}, but this run asks for "
                    f"{section}.{key}={new.get(key)!r}; use another training.workdir or the same settings"
                )


# --- the loop ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` returns. A run stopped before its end (`stop_at`, or a signal: `interrupted`) has no
    final evaluation (`eval` is None) and must not be scored as finished: check `finished` (or
    `interrupted`) before using `eval` or treating `params` as the trained model.

    `summary` is what summary.json records for a finished run: "stages" (per stage: steps, tokens,
    FLOPs, end-of-stage held-out metrics), "relative_cost", "workdir", "eval"."""

    workdir: str
    summary: dict
    params: object = None  # the parameters at the end (or at the stop); None if stopped before a step
    stopped_at: int | None = None  # the global step a stopped run checkpointed at (None: not stopped)
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run

    @property
    def finished(self) -> bool:
        return self.stopped_at is None and self.interrupted is None

    @property
    def stages(self) -> list[dict]:
        return self.summary.get("stages", [])

    @property
    def eval(self) -> dict | None:
        """The final held-out metrics ("eval/bits_per_byte", ...); None unless `finished`."""
        return self.summary.get("eval")

    @property
    def exit_code(self) -> int:
        """The command line's status for this run: 130 after SIGINT, else 0 (a SIGTERM'd run checkpointed
        and resumes: preemption is not a failure)."""
        return 130 if self.interrupted == "SIGINT" else 0


def train(cfg: Config, *, stop_at: int | None = None) -> TrainResult:
    """Train (or resume) the run in cfg.training.workdir; returns a `TrainResult`.

    `stop_at` stops after that global step (as a preemption would) after checkpointing. SIGTERM or
    SIGINT does the same at the step in flight and sets `interrupted` to the signal's name. One run
    at a time holds the work directory (`WorkdirLock`); a non-finite loss raises `DivergenceError`.
    """
    cfg.validate()
    workdir = Path(cfg.training.workdir)
    try:
        lock = WorkdirLock(workdir).__enter__() if is_main() else None
    except OSError as e:
        raise os_error(workdir, e, "create the work directory") from None
    try:
        with StopSignals() as stop:
            ctx = setup(cfg)
            if stop.received:  # interrupted while reading the data: nothing trained, nothing to save
                return TrainResult(str(workdir), {"stages": [], "workdir": str(workdir), "eval": None},
                                   interrupted=stop.name)
            return _Run(ctx, stop_at, stop).run()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def save_initial_checkpoint(cfg: Config, params) -> None:
    """Set up the run in cfg.training.workdir and write a step-0 checkpoint holding `params` (e.g.
    imported weights) exactly as the first stage starts: fresh optimizer state, the data iterator at
    its start. `train(cfg)` then continues from those parameters."""
    cfg.validate()
    with WorkdirLock(cfg.training.workdir):
        ctx = setup(cfg, compile_steps=False)  # no step runs here
        stage = ctx.stages[0]
        program = build_program(ctx.cfg.model, cfg.training, ctx.mesh, steps=stage.steps,
                                patch_size=stage.patch_size)
        with jax.set_mesh(ctx.mesh):
            state = program.init(params)
        ckpt = Checkpointer(checkpoint_dir(ctx.cfg), cfg.training.keep_checkpoints)
        ckpt.save(0, state, ctx.data.batches(stage.seq_tokens, 0), _meta(_Position(), 0, []))
        ckpt.wait()
        ckpt.close()


@dataclasses.dataclass
class _Position:
    """Where a run is inside a stage; saved in every checkpoint's metadata."""

    stage: int = 0
    stage_step: int = 0
    data_start: int = 0  # the stage's first block / document
    last_doc: int = -1  # streaming: the largest document position this process read from
    next_data_start: int | None = None  # set when the stage ends


class _Run:
    """One call of `train`: the stage loop with its checkpointer, metrics writer and progress bar.
    The loop steps, logs, evaluates and checkpoints; `RunData` supplies the batches."""

    def __init__(self, ctx: RunContext, stop_at: int | None, stop: StopSignals):
        self.ctx, self.stop_at, self.stop = ctx, stop_at, stop
        tc = ctx.cfg.training
        self.ckpt = Checkpointer(checkpoint_dir(ctx.cfg), tc.keep_checkpoints)
        self.writer = MetricsWriter(ctx.workdir, enabled=is_main(), resume_step=self.ckpt.latest() or 0)
        peak, self.peak_source = peak_flops_per_device(ctx.cfg.model.dtype)
        self.peak_total = peak * ctx.mesh.size
        self.cost = relative_cost(tc.patch_size, tc.patch_fraction if len(ctx.stages) > 1 else 0.0)
        self.offsets = np.cumsum([0] + [s.steps for s in ctx.stages]).tolist()
        self.progress = _progress(self.offsets[-1], tc.progress and is_main())
        self.summary = {"stages": [], "relative_cost": self.cost, "workdir": str(ctx.workdir), "eval": None}
        self.profiler = StepProfiler(tc.profile_window(), ctx.workdir / "profile", is_main())

    def run(self) -> TrainResult:
        try:
            return self._run()
        except (OSError, PathError) as e:  # e.g. a full disk met by the metrics before the checkpointer
            self._quiet_close()
            raise self._with_checkpoint_state(e) from None
        except BaseException:
            self._quiet_close()
            raise

    def _with_checkpoint_state(self, e: Exception) -> PcompError:
        """`e` as one line that also says which checkpoint a resume would start from: the checkpointer's
        own error if the write in flight failed too (it names that step), else the last complete step."""
        try:
            self.ckpt.wait()
        except CheckpointError as failed:
            return failed
        except Exception:
            pass
        last = self.ckpt.last_complete()
        message = str(e) if isinstance(e, PcompError) else str(os_error(self.ctx.workdir, e, "write to"))
        return PathError(message + (f"; the last complete checkpoint is step {last}" if last is not None
                                    else "; no checkpoint is complete"))

    def _quiet_close(self) -> None:
        """Close the metrics writer quietly; the original error is the one to report."""
        self.progress.close()
        try:
            self.profiler.close()  # a run stopped inside the profile window still writes its trace
        except Exception:
            pass
        try:
            self.writer.close()
        except OSError:
            pass

    def _run(self) -> TrainResult:
        ctx, cfg = self.ctx, self.ctx.cfg
        resume_step = self.ckpt.latest()
        pos, params = _Position(), None
        if resume_step is not None:
            meta = self.ckpt.restore_meta(resume_step)
            self.summary["stages"] = meta["summaries"]
            pos = _Position(**{f.name: meta[f.name] for f in dataclasses.fields(_Position)})
        self._log(f"pcomp: {cfg.model.name} model, {len(ctx.stages)} stage(s) "
                  + ", ".join(f"{s.name}(K={s.patch_size}, {s.steps} steps)" for s in ctx.stages)
                  + f"; relative cost {self.cost:.3f}; mesh {dict(ctx.mesh.shape)}; peak "
                  f"{self.peak_total / ctx.mesh.size:.3g} FLOP/s/device ({self.peak_source})"
                  + (f"; resuming at step {resume_step}" if resume_step is not None else ""))
        with jax.set_mesh(ctx.mesh):
            while pos.stage < len(ctx.stages):
                stage = ctx.stages[pos.stage]
                program, step = ctx.programs[pos.stage].program, ctx.programs[pos.stage].step
                iterator = ctx.data.batches(stage.seq_tokens, pos.data_start)
                if resume_step is not None:  # resume inside (or at the end of) this stage
                    state, _ = self.ckpt.restore(resume_step, program.abstract_state(), iterator)
                    resume_step = None
                else:  # a fresh stage: new optimizer state over new or carried-over parameters
                    state = program.init(params)
                if pos.stage_step < stage.steps:
                    state = self._run_stage(program, step, state, iterator, pos)
                    gstep = self.offsets[pos.stage] + pos.stage_step
                    if gstep == self.stop_at or self.stop.received:  # preempted here (or as if)
                        if self.stop.received:
                            self._log(f"pcomp: stopped by {self.stop.name} at step {gstep}; checkpoint saved in "
                                      f"{self.ckpt.directory}; run the same command to resume")
                        self._close()
                        return TrainResult(str(ctx.workdir), _jsonable(self.summary), state["params"],
                                           stopped_at=gstep, interrupted=self.stop.name)
                params = state["params"]
                pos = _Position(stage=pos.stage + 1, data_start=pos.next_data_start)
        # the final model is the last stage's: its end-of-stage evaluation is the run's result
        self.summary["eval"] = {f"eval/{k[4:]}": v for k, v in self.summary["stages"][-1].items()
                                if k.startswith("end_")}
        self._close()  # the last checkpoint is complete (or its failure raised) before the run says done
        summary = _jsonable(self.summary)
        if is_main():
            write_file(ctx.workdir / "summary.json", json.dumps(summary, indent=2).encode())
        self._log(f"pcomp: done; held-out bits/byte {self.summary['eval']['eval/bits_per_byte']:.4f}, "
                  f"loss {self.summary['eval']['eval/loss']:.4f}")
        return TrainResult(str(ctx.workdir), summary, params)

    def _close(self) -> None:
        """Wait for the checkpoint writes (a failed one raises `CheckpointError` here) and close."""
        self.progress.close()
        self.profiler.close()
        self.ckpt.wait()
        self.ckpt.close()
        self.writer.close()

    def _log(self, msg: str) -> None:
        if is_main():
            self.progress.write(msg) if not self.progress.disable else print(msg, flush=True)

    def _stage_stats(self, index: int) -> dict:
        """The stage's size and model FLOPs (token-level convention: K * seq_len tokens cost like
        seq_len positions, since the model sees seq_len patches)."""
        cfg, stage = self.ctx.cfg, self.ctx.stages[index]
        b, t = cfg.training.batch_size, cfg.data.seq_len
        return {"name": stage.name, "patch_size": stage.patch_size, "steps": stage.steps,
                "tokens": stage.tokens(b), "flops": b * t * flops_per_position(cfg.model, t) * stage.steps}

    def _evaluate(self, program: TrainProgram, params) -> dict:
        return evaluate(program.eval, params, self.ctx.data.eval_set, self.ctx.cfg.training.batch_size,
                        self.ctx.mesh)

    def _run_stage(self, program: TrainProgram, step: CompiledStep, state, iterator, pos: _Position):
        """Steps of stage `pos.stage` from `pos.stage_step` (advancing `pos`) with the stage's compiled
        `step`; returns the state at the stage's end or at `stop_at`."""
        ctx, tc = self.ctx, self.ctx.cfg.training
        stage = ctx.stages[pos.stage]
        stats = self._stage_stats(pos.stage)
        if len(self.summary["stages"]) <= pos.stage:
            self.summary["stages"].append(stats)
        flops_step = stats["flops"] / stage.steps
        tokens_step = tc.batch_size * stage.seq_tokens
        tokens_before = sum(s.tokens(tc.batch_size) for s in ctx.stages[:pos.stage])
        loss_key = "train/patch_loss" if stage.patch_size > 1 else "train/loss"
        mask = global_batch(np.ones((tc.batch_size // jax.process_count(), stage.seq_tokens), np.int32), ctx.mesh)
        t_last, steps_since = None, 0
        self.progress.set_description(stage.name)
        self.progress.update(self.offsets[pos.stage] + pos.stage_step - self.progress.n)
        pending = None  # (global step, metrics) of the previous step, checked one step late (no stall)
        while pos.stage_step < stage.steps:
            self.profiler.before_step(self.offsets[pos.stage] + pos.stage_step + 1)
            batch = next(iterator)
            if "doc" in batch:
                pos.last_doc = max(pos.last_doc, int(batch["doc"].max()))
            state, metrics = step.run(state, {"tokens": global_batch(batch["tokens"], ctx.mesh), "mask": mask})
            if pending is not None:
                self._check_finite(*pending)
            pos.stage_step += 1
            steps_since += 1
            gstep = self.offsets[pos.stage] + pos.stage_step
            pending = (gstep, metrics)
            if self.profiler.after_step(gstep, (state, metrics)):
                self._log(f"pcomp: profiler trace of steps {'..'.join(map(str, self.profiler.window))} written to "
                          f"{self.profiler.directory} (tensorboard --logdir {self.profiler.directory})")
            self.progress.update(1)
            end = pos.stage_step == stage.steps
            if pos.stage_step == 1 or pos.stage_step % tc.log_every == 0 or end:
                self._check_finite(gstep, metrics)
                m = jax.device_get(metrics)
                now = time.perf_counter()
                scalars = {loss_key: m["loss"], "train/lr": m["lr"], "train/grad_norm": m["grad_norm"],
                           "train/stage": pos.stage, "train/tokens_seen": tokens_before + pos.stage_step * tokens_step}
                if t_last is not None:  # the first logged step includes start-up (the step is compiled before)
                    dt = (now - t_last) / steps_since
                    scalars.update({"perf/step_time_s": dt, "perf/tokens_per_s": tokens_step / dt,
                                    "perf/model_flops_per_s": flops_step / dt,
                                    "perf/mfu": flops_step / dt / self.peak_total})
                t_last, steps_since = now, 0
                self.writer.write(gstep, scalars)
                self.progress.set_postfix(loss=f"{float(m['loss']):.3f}", mfu=f"{scalars.get('perf/mfu', 0):.0%}",
                                          refresh=False)
            if tc.eval_every and pos.stage_step % tc.eval_every == 0 and not end:
                self.writer.write(gstep, self._evaluate(program, state["params"]))
            if end:
                self._check_finite(gstep, metrics)
                stage_eval = self._evaluate(program, state["params"])
                stats.update({f"end_{k.split('/')[1]}": v for k, v in stage_eval.items()})
                self.summary["stages"][pos.stage] = stats
                self.writer.write(gstep, stage_eval)
                pos.next_data_start = ctx.data.next_start(stage.seq_tokens, stage.steps, pos.data_start, pos.last_doc)
                self._log(f"pcomp: stage {stage.name} done: {stage.steps} steps, {stats['tokens']:,} tokens, "
                          f"{stats['flops']:.3e} FLOPs; held-out bits/byte {stage_eval['eval/bits_per_byte']:.4f}")
            stopping = gstep == self.stop_at or self.stop.received is not None
            if end or pos.stage_step % tc.checkpoint_every == 0 or stopping:
                self._check_finite(gstep, metrics)  # a non-finite state is never written
                self.ckpt.save(gstep, state, iterator, _meta(pos, gstep, self.summary["stages"]))
            if stopping:
                break
        return state

    def _check_finite(self, gstep: int, metrics: dict) -> None:
        m = jax.device_get(metrics)
        if not bool(m["finite"]):
            self.ckpt.wait()
            last = self.ckpt.latest()
            raise DivergenceError(
                f"training diverged at step {gstep}: loss {float(m['loss']):.4g}, gradient norm "
                f"{float(m['grad_norm']):.4g} (lr {float(m['lr']):.3g}); "
                + (f"the last good checkpoint is step {last} in {self.ckpt.directory}" if last is not None
                   else "no checkpoint was written")
                + "; lower training.lr or raise training.warmup_steps")


def _meta(pos: _Position, gstep: int, summaries: list) -> dict:
    """A checkpoint's run position: where in which stage, and the finished stages' summaries."""
    return {**dataclasses.asdict(pos), "global_step": gstep, "summaries": summaries}


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
