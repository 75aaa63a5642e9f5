"""The pure train and eval steps, the optimizer, and `build_program`: their jit wrappers with explicit
shardings, the one place a train state and step are built.

A train state is a plain dict pytree {params, opt_state, step}; the model's graph definition
is static. Token-level training is the K = 1 case of the patch-level step, so both levels share one
code path (`pcomp.patching`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pcomp.config import ModelConfig, TrainingConfig
from pcomp.errors import ConfigError
from pcomp.models.sharding import batch_sharding, param_shardings
from pcomp.models.transformer import LAYERS, Transformer, rope_tables
from pcomp.patching import next_patch_nll, patchify
from pcomp.train.checkpoint import abstract_with_shardings
from pcomp.train.memory import MemoryUse

TrainState = dict  # {"params": nnx.State, "opt_state": optax state, "step": int32[]}

# XLA:CPU options of the train step (and only of it: the compressor's M1 must keep its numerics, so these
# are per-program compiler options, not process-wide XLA_FLAGS). YNNPACK's dot fusions, which also
# take in the dots' elementwise neighbours, speed up the small CPU models' steps and leave the larger
# ones as they were (RESULTS.md, "Against PyTorch"); a flag of the same name in the user's XLA_FLAGS wins.
CPU_TRAIN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """The train step's compiler options on `mesh`'s platform: `CPU_TRAIN_OPTIONS` on CPU (less any the
    user's XLA_FLAGS sets), none elsewhere."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    user = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in CPU_TRAIN_OPTIONS.items() if f"--{k}" not in user} or None


def warmup_steps(tc: TrainingConfig, steps: int, *, first_stage: bool = True) -> int:
    """Linear warm-up length of a stage of `steps` steps: min(warmup_steps, steps // 5) for the first
    stage; a later stage (re-warmed over carried-over parameters) takes round(warmup_fraction * steps),
    or the first-stage rule when warmup_fraction is 0."""
    if not 0.0 <= tc.warmup_fraction < 1.0:
        raise ConfigError(f"training.warmup_fraction={tc.warmup_fraction} must be in [0, 1)")
    if first_stage or tc.warmup_fraction == 0.0:
        return min(tc.warmup_steps, steps // 5)
    return round(tc.warmup_fraction * steps)


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """A stage's learning rate: linear warm-up from `init` to `peak` over `warmup` steps, then cosine decay
    to `end` at step `decay_steps` (optax.warmup_cosine_decay_schedule's rule).

    The schedule enters the compiled train step as values (`args()`, replicated scalars), not as
    constants baked into the program: steps of any length, warm-up or learning rate compile to the same
    executable, so a run with another `training.steps` (a study's next data budget, a test) reuses the
    compiled step from JAX's persistent compilation cache."""

    warmup: int
    decay_steps: int
    init: float
    peak: float
    end: float

    @classmethod
    def of(cls, tc: TrainingConfig, steps: int, *, first_stage: bool = True) -> LRSchedule:
        """The schedule of a stage of `steps` steps (warm-up by `warmup_steps(..., first_stage)`)."""
        warmup = warmup_steps(tc, steps, first_stage=first_stage)
        return cls(warmup=warmup, decay_steps=max(steps, warmup + 1), init=0.0 if warmup else tc.lr,
                   peak=tc.lr, end=tc.lr * tc.min_lr_ratio)

    def args(self) -> dict[str, jax.Array]:
        """The scalars `learning_rate` reads: each Python float optax would fold into the program,
        rounded to float32 exactly as optax's weakly typed constants are."""
        alpha = 0.0 if self.peak == 0.0 else self.end / self.peak
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return {"warmup": jnp.asarray(self.warmup, jnp.int32), "cosine_steps": f32(float(self.decay_steps - self.warmup)),
                "init": f32(self.init), "peak": f32(self.peak), "init_minus_peak": f32(self.init - self.peak),
                "alpha": f32(alpha), "one_minus_alpha": f32(1 - alpha)}

    def __call__(self, count) -> jax.Array:
        return learning_rate(jnp.asarray(count, jnp.int32), self.args())


def learning_rate(count: jax.Array, s: dict[str, jax.Array]) -> jax.Array:
    """The learning rate at optimizer step `count` under `LRSchedule.args()` `s`, traceable with the
    schedule's lengths as arrays. The operations are optax's (join_schedules of linear_schedule and
    cosine_decay_schedule, exponent 1) in the same order and precision; the value agrees with
    optax.warmup_cosine_decay_schedule's to float32 rounding of the peak (XLA folds the constants of a
    fixed-length schedule, e.g. x / 7 into x * f32(1/7); tests/test_patching.py checks it)."""
    warmup = s["warmup"]
    # linear warm-up (optax.polynomial_schedule, power 1; constant `init` when there is no warm-up)
    ramp_count = jnp.clip(count, 0, jnp.maximum(warmup, 1))
    frac = 1 - ramp_count / jnp.maximum(warmup, 1)
    ramp = jnp.where(warmup > 0, s["init_minus_peak"] * (frac**1) + s["peak"], s["init"])
    # cosine decay over the remaining steps (optax.cosine_decay_schedule)
    decay_count = jnp.minimum(count - warmup, s["cosine_steps"])
    cosine_decay = 0.5 * (1 + jnp.cos(jnp.pi * decay_count / s["cosine_steps"]))
    decayed = s["one_minus_alpha"] * cosine_decay**1.0 + s["alpha"]
    return jnp.where(count < warmup, ramp, s["peak"] * decayed)


def make_optimizer(tc: TrainingConfig, steps: int, *, first_stage: bool = True
                   ) -> tuple[optax.GradientTransformation, LRSchedule]:
    """AdamW with linear warmup (`warmup_steps`) and cosine decay to lr * min_lr_ratio at `steps`;
    global-norm clipping (`adamw`), and its schedule."""
    schedule = LRSchedule.of(tc, steps, first_stage=first_stage)
    return adamw(tc, schedule), schedule


def adamw(tc: TrainingConfig, lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW at learning rate `lr` (a number or a function of the step).

    Weight decay applies to matrices only (not to norm scales). The optimizer state's structure does
    not depend on `lr`, so a state made with one `lr` is updated by a transformation with another (the
    train step builds its own over the traced schedule)."""
    decay_mask = lambda params: jax.tree.map(_is_matrix, params, is_leaf=_is_variable)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask),
    )


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _is_matrix(v) -> bool:
    """A parameter with two or more axes per layer (the stacked blocks' leading `layers` axis does not
    count): weight decay applies to these, not to norm scales."""
    if not isinstance(v, nnx.Variable):
        return v.ndim >= 2
    axes = v.get_metadata().get("logical_axes") or (None,) * v.ndim
    return sum(a != LAYERS for a in axes) >= 2


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract (shape-only) parameter state, without allocating."""
    model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    return nnx.split(model)


def init_params(cfg: ModelConfig, seed: int) -> nnx.State:
    return nnx.split(Transformer(cfg, nnx.Rngs(params=seed)))[1]


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int, params=None) -> TrainState:
    """Fresh optimizer state over new (or given, e.g. carried over from stage 1) parameters."""
    if params is None:
        params = init_params(cfg, seed)
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def objective(params, graphdef, tokens_bt, mask_bt, patch_size: int, z_loss: float, total, rope=None):
    """(summed next-patch NLL + z-loss) / `total` target tokens, and (nll, count) for logging.

    K = `patch_size` = 1 is the token-level loss; the z-loss term is K * mean-square log-normaliser.
    `rope`: the model's `rope_tables`, passed in (else computed in the program).
    """
    model = nnx.merge(graphdef, params)
    x_bnd = patchify(model.embed_tokens(tokens_bt), patch_size)
    logits_bnv = model(embeddings_btd=x_bnd, rope=rope)
    nll, count, lse_sq = next_patch_nll(logits_bnv, tokens_bt, patch_size, mask_bt)
    objective = (nll + z_loss * patch_size * lse_sq) / total
    return objective, (nll, count)


def train_step(graphdef, tc: TrainingConfig, state: TrainState, batch: dict, consts: dict, *, patch_size: int,
               grad_accum: int) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch {tokens [B, K*T], mask [B, K*T]}, accumulating over
    `grad_accum` micro-batches; the loss is the mean NLL over every target token of the batch.

    `consts` = `step_constants(...)`: the stage's `LRSchedule.args()` (the learning rate is computed
    from them in the step, so the compiled program does not depend on the stage's length) and the
    model's rotary tables (read, not recomputed in every layer)."""
    schedule = consts["schedule"]
    tx = adamw(tc, lambda count: learning_rate(count, schedule))
    z_loss = tc.z_loss
    tokens, mask = batch["tokens"], batch["mask"]
    b, t = tokens.shape
    total = jnp.maximum(mask[:, patch_size:].astype(jnp.float32).sum(), 1.0)
    # micro-batch i takes rows i, i + A, ...: each device keeps its own rows
    micro = lambda x: x.reshape(b // grad_accum, grad_accum, t).swapaxes(0, 1)  # noqa: E731
    grad_fn = jax.grad(objective, has_aux=True)

    def accumulate(carry, mb):
        grads, nll, count = carry
        g, (n, c) = grad_fn(state["params"], graphdef, mb[0], mb[1], patch_size, z_loss, total, consts["rope"])
        return (jax.tree.map(jnp.add, grads, g), nll + n, count + c), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    if grad_accum == 1:
        (grads, nll, count), _ = accumulate((zeros, 0.0, 0.0), (tokens, mask))
    else:
        (grads, nll, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), (micro(tokens), micro(mask)))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    loss, grad_norm = nll / jnp.maximum(count, 1.0), optax.tree.norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": learning_rate(state["step"], schedule),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics


def eval_step(graphdef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Token-level summed NLL (nats) and target count of {tokens [B, T], mask [B, T]}."""
    model = nnx.merge(graphdef, params)
    logits = model(batch["tokens"])
    nll, count, _ = next_patch_nll(logits, batch["tokens"], 1, batch["mask"])
    return nll, count


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """One stage's compiled functions on a mesh: the only way pcomp builds a train state and step.

    `init(params)` makes a sharded train state (fresh parameters when `params` is None, else the given
    ones, e.g. carried over from stage 1) with a fresh optimizer state; `step(state, batch)` runs the
    jitted, buffer-donating `train_step` (`train_step_jit`, which takes the stage's `step_constants` as
    its third argument); `eval(params, batch)` the jitted `eval_step`. The trainer, the loader, the benchmarks and
    the tests all call `build_program`.
    """

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation  # the optimizer at the stage's schedule (what `init` initialises)
    schedule: LRSchedule
    model: ModelConfig
    mesh: Mesh
    state_sharding: Any  # pytree of NamedSharding matching the train state
    init: Callable[[nnx.State | None], TrainState]
    train_step_jit: Any  # jax.jit of `train_step`: (state, batch, step constants) -> (state, metrics)
    eval: Callable[[nnx.State, dict], tuple[jax.Array, jax.Array]]
    batch_sharding: NamedSharding

    def constants(self) -> dict:
        """The train step's third argument: {"schedule": `schedule.args()`, "rope": `rope_tables(model)`}."""
        return {"schedule": self.schedule.args(), "rope": rope_tables(self.model)}

    @functools.cached_property
    def step_constants(self) -> dict:
        """`constants()` replicated on the mesh, made on first use: building or compiling a program
        allocates nothing (its mesh may be a TPU topology with no TPU attached, `pcomp compile`)."""
        return jax.device_put(self.constants(), NamedSharding(self.mesh, P()))

    def step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer step of this stage (donates `state`)."""
        return self.train_step_jit(state, batch, self.step_constants)

    def lower_step(self, rows: int, seq_tokens: int):
        """`train_step_jit` lowered for global batches of `rows` x `seq_tokens` tokens from abstract
        state, batch and constants (call under `jax.set_mesh(self.mesh)`); allocates nothing."""
        replicated = NamedSharding(self.mesh, P())
        consts = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated),
                              jax.eval_shape(self.constants))
        return self.train_step_jit.lower(self.abstract_state(), self.abstract_batch(rows, seq_tokens), consts)

    def abstract_state(self) -> TrainState:
        """The state's shapes with their shardings (an orbax restore target); allocates nothing."""
        return abstract_with_shardings(jax.eval_shape(self.init, None), self.state_sharding)

    def abstract_batch(self, rows: int, seq_tokens: int) -> dict:
        """A global batch {tokens, mask} of `rows` x `seq_tokens` int32, as shapes with shardings."""
        shape = jax.ShapeDtypeStruct((rows, seq_tokens), jnp.int32, sharding=self.batch_sharding)
        return {"tokens": shape, "mask": shape}

    def compile_step(self, rows: int, seq_tokens: int) -> CompiledStep:
        """`step` compiled ahead of time for global batches of `rows` x `seq_tokens` tokens, from
        abstract arguments only (nothing is allocated): the executable, the seconds lowering and
        compiling took, and XLA's per-device memory accounting."""
        start = time.perf_counter()
        with jax.set_mesh(self.mesh):  # the model's sharding constraints apply under the mesh
            compiled = self.lower_step(rows, seq_tokens).compile()
        return CompiledStep(compiled, lambda: self.step_constants, time.perf_counter() - start, MemoryUse.of(compiled))


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """A train step compiled for one batch shape; call `run(state, batch)` like `TrainProgram.step`."""

    executable: Any  # the compiled `train_step_jit`: (state, batch, step constants); .as_text() is its HLO
    step_constants: Callable[[], dict]  # the stage's `TrainProgram.step_constants` (made on first use)
    seconds: float  # lowering + compilation
    memory: MemoryUse | None  # per device; None when the backend reports nothing

    def run(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self.executable(state, batch, self.step_constants())


def build_program(model: ModelConfig, training: TrainingConfig, mesh: Mesh, *, steps: int,
                  patch_size: int = 1, first_stage: bool = True, cpu_options: bool = True) -> TrainProgram:
    """The optimizer for a stage of `steps` steps (warm-up by `warmup_steps(..., first_stage)`) and its
    init / train / eval functions on `mesh`. The compiled train step does not depend on `steps` (the
    schedule is an argument), so stages and runs of other lengths share it. `cpu_options=False` compiles
    the step without `CPU_TRAIN_OPTIONS` (for comparisons: experiments/bench_cpu_step.py)."""
    graphdef, _ = abstract_model(model)
    tx, schedule = make_optimizer(training, steps, first_stage=first_stage)
    shapes = jax.eval_shape(lambda: init_state(model, tx, training.seed))
    state_sh = param_shardings(shapes, mesh)  # parameters and optimizer moments by logical axes; scalars replicated
    batch_sh = {"tokens": batch_sharding(mesh), "mask": batch_sharding(mesh)}
    replicated = NamedSharding(mesh, P())
    init = jax.jit(lambda params: init_state(model, tx, training.seed, params), out_shardings=state_sh)
    step = jax.jit(functools.partial(train_step, graphdef, training, patch_size=patch_size,
                                     grad_accum=training.grad_accum),
                   in_shardings=(state_sh, batch_sh, replicated), out_shardings=(state_sh, replicated),
                   donate_argnums=(0,), compiler_options=compiler_options(mesh) if cpu_options else None)
    evaluate = jax.jit(functools.partial(eval_step, graphdef), in_shardings=(state_sh["params"], batch_sh),
                       out_shardings=replicated)
    return TrainProgram(graphdef, tx, schedule, model, mesh, state_sh, init, step, evaluate, batch_sh["tokens"])
