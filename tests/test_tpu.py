"""TPU and GPU paths proven on a CPU machine: `pcomp compile` (the trainer's steps compiled for a TPU
topology with no TPU: per-chip memory, fit, collectives), the collective counter on HLO text, and Pallas
splash attention run in interpret mode against XLA's attention (forward and gradients).

The compile tests need libtpu (`pip install 'pcomp[tpu]'`) and skip without it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcomp.cli import main
from pcomp.config import Config
from pcomp.errors import ConfigError
from pcomp.models.attention import choose, splash_attention, xla_attention
from pcomp.models.sharding import make_mesh
from pcomp.models.transformer import count_params
from pcomp.train import aot, memory
from pcomp.train.aot import collectives

ROOT = Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install 'pcomp[tpu]')")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# --- the collective counter ---------------------------------------------------------------------------
_HLO = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p.1), index=1
  %all-gather.1 = bf16[4,1024]{1,0:T(8,128)(2,1)} all-gather(%x), dimensions={0}
  %ags = (f32[8]{0}, f32[32]{0}) all-gather-start(%x), dimensions={0}
  %agd = f32[32]{0} all-gather-done(%ags)
  %cps = (bf16[2,96]{1,0}, bf16[2,96]{1,0}) collective-permute-start(%x), source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[2,96]{1,0} collective-permute-done(%cps)
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)
}

%all-reduce-scatter.6 (input_0: f32[64,16]) -> (f32[16,16]) {
  %input_0 = f32[64,16]{1,0} parameter(0)
  ROOT %all-reduce.68 = f32[64,16]{1,0} all-reduce(%input_0), to_apply=%add
}

ENTRY %main (a: f32[8]) -> f32[] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
  %fusion.1 = (f32[16,16]{1,0:T(8,128)}) fusion(%a), kind=kCustom, calls=%all-reduce-scatter.6
  ROOT %all-reduce.1 = f32[] all-reduce(%s), to_apply=%add
}
"""


def test_collectives_count_a_loop_body_once_per_iteration():
    """12 iterations of a body with a synchronous and an asynchronous all-gather; the TPU's fused
    reduce-scatter counts once as a reduce-scatter of its result (not as the all-reduce inside it)."""
    out = collectives(_HLO)
    assert out["all-gather"] == aot.Collective(24, 12 * (4 * 1024 * 2 + 32 * 4))
    assert out["reduce-scatter"] == aot.Collective(1, 16 * 16 * 4)
    assert out["all-reduce"] == aot.Collective(1, 4)
    assert out["all-to-all"] == aot.Collective(0, 0)
    assert out["collective-permute"] == aot.Collective(12, 12 * 2 * 96 * 2)  # a windowed einsum's steps
    known = _HLO.replace("condition=%cond, body=%body", 'condition=%cond, body=%body, backend_config={"known_trip_'
                         'count":{"n":"3"}}')
    assert collectives(known)["all-gather"].count == 6  # XLA's known trip count wins over the constant


def test_collectives_of_a_compiled_cpu_program():
    """A matmul sharded on its contracting dimension over 4 CPU devices ends in one all-reduce of the
    [64, 64] float32 result."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices("cpu")[:4]), ("x",))
    a = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P(None, "x")))
    b = jax.ShapeDtypeStruct((128, 64), jnp.float32, sharding=NamedSharding(mesh, P("x", None)))
    compiled = jax.jit(jnp.matmul, out_shardings=NamedSharding(mesh, P())).lower(a, b).compile()
    out = collectives(compiled.as_text())
    assert out["all-reduce"] == aot.Collective(1, 64 * 64 * 4)
    assert out["all-gather"].count == out["reduce-scatter"].count == 0


# --- topologies ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerator, topology", [
    ("v4-8", "v4:2x2x1"), ("v4-32", "v4:2x2x4"), ("v4-128", "v4:4x4x4"), ("v5p-8", "v5p:2x2x1"),
    ("v5p-64", "v5p:2x4x4"), ("v5litepod-1", "v5e:1x1"), ("v5litepod-8", "v5e:2x4"), ("v5litepod-256", "v5e:16x16"),
    ("v6e-4", "v6e:2x2"), ("v6e-32", "v6e:4x8"), ("v6e-3", None), ("v4-6", None), ("tpu-8", None),
])
def test_accelerator_types_name_topologies(accelerator, topology):
    """v4-N and v5p-N count TensorCores (two per chip), v5litepod-N and v6e-N chips."""
    assert aot.accelerator_topology(accelerator) == topology


@pytest.mark.parametrize("topology, words", [
    ("v7:2x2", ["'v7:2x2'", "v4, v5e, v5p, v6e"]),
    ("v5e", ["'v5e'", "GENERATION:SHAPE"]),
    ("v5e:2xq", ["'v5e:2xq'"]),
    ("cpu:0", ["cpu:N with N >= 1"]),
    ("cpu:4096", ["jax has 8 CPU devices", "device_count=4096"]),
    ("h100:x", ["h100:N with N >= 1"]),
    ("h100:12", ["hosts of 8"]),
])
def test_bad_topologies_are_one_line_errors(topology, words, capsys):
    assert main(["compile", "--topology", topology, "--config", "test-tiny"]) == 2
    err = _one_line(capsys)
    assert all(w in err for w in words), err


@pytest.mark.slow
def test_cpu_topology_compiles_the_token_step(capsys):
    """cpu:4: one line with the mesh, the batch, the kernel, the memory and the collectives."""
    rc = main(["compile", "--topology", "cpu:4", "--config", "test-tiny", "mesh.data=1", "mesh.fsdp=-1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0, out
    assert len(out) == 1 and out[0].startswith(
        "pcomp: token step (K=1) on cpu:4 (4 CPU devices): mesh data=1 fsdp=4 tensor=1, global batch 8 x 64 "
        "tokens, attention blocked, compiled in "), out
    assert ": fits; collectives per step: all-gather " in out[0]


def test_missing_libtpu_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
    assert main(["compile", "--topology", "v5e:2x2", "--config", "test-tiny"]) == 2
    assert "pip install 'pcomp[tpu]'" in _one_line(capsys)


needs_cuda_plugin = pytest.mark.skipif(not aot.has_module("jax_plugins.xla_cuda12"),
                                       reason="jax's CUDA plugin is not installed (jax-cuda12-plugin, -pjrt)")


def test_h100_without_the_cuda_plugin_names_it(monkeypatch, capsys):
    monkeypatch.setattr(aot, "has_module", lambda name: False)
    assert main(["compile", "--topology", "h100:8", "--config", "test-tiny"]) == 2
    assert f"pip install jax-cuda12-plugin=={jax.__version__} jax-cuda12-pjrt" in _one_line(capsys)


@pytest.mark.slow
@needs_cuda_plugin
def test_compile_for_h100s_without_a_gpu(capsys):
    """16 H100s (2 hosts) through jax's CUDA plugin on a CPU machine: XLA attention compiles and fits;
    cuDNN attention (auto, bfloat16) needs the cuDNN library where it is traced: one line if absent."""
    cfg = Config.preset("test-tiny").override("mesh.data=1", "mesh.fsdp=-1", "model.dtype=bfloat16",
                                              "training.batch_size=16", "model.attention=fused")
    target = aot.resolve("h100:16")
    assert (target.platform, target.chips, target.hosts, target.hbm_bytes) == ("gpu", 16, 2, aot.H100_BYTES)
    (report,) = aot.compile_for_topology(cfg, target)
    assert report.fits and report.attention == "fused" and report.collectives["all-gather"].count > 0
    if not aot.has_module("nvidia.cudnn"):
        assert main(["compile", "--topology", "h100:8", "--config", "test-tiny", "model.dtype=bfloat16"]) == 2
        assert "needs the cuDNN library here" in _one_line(capsys)


@pytest.mark.slow
def test_compile_prints_no_libtpu_noise():
    """A fresh process resolving a TPU topology prints none of libtpu's no-TPU warnings."""
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed")
    code = "from pcomp.train.aot import resolve; t = resolve('v5e:4x4'); print(t.describe())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "v5e:4x4 (16 chips, 4 hosts)"
    assert "TPU_ACCELERATOR_TYPE" not in out.stderr and "WARNING" not in out.stderr, out.stderr


# --- attention kernels ----------------------------------------------------------------------------------
def test_auto_attention_follows_the_mesh_platform():
    assert choose("auto", 256, jnp.float32) == "blocked"  # CPU, no mesh
    assert choose("fused", 256, jnp.float32) == "fused"
    with pytest.raises(ConfigError, match="model.attention=splash runs on TPU only, not cpu"):
        choose("splash", 256, jnp.float32)
    with pytest.raises(ConfigError, match="model.attention=cudnn runs on NVIDIA GPUs only"):
        choose("cudnn", 256, jnp.bfloat16)


def _qkv(dtype, b=2, t=256, n=4, kv=2, h=32):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, t, kv, h), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, t, kv, h), jnp.float32).astype(dtype)
    return q, k, v


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_splash_attention_matches_xla(dtype, tol):
    """Splash attention in Pallas interpret mode, under shard_map on a data=2 x tensor=2 mesh (batch and
    heads split, GQA 4 query heads on 2 KV heads, two 128-position blocks), against XLA's attention:
    forward and the gradients of q, k and v, relative to the largest reference value. Tolerances: float32
    1e-5 (the kernels sum in another order), bfloat16 2e-2 (2-3 bf16 ulps)."""
    from pcomp.config import MeshConfig

    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), jax.devices("cpu")[:4])
    q, k, v = _qkv(dtype)
    cot = jax.random.normal(jax.random.key(1), q.shape, jnp.float32).astype(dtype)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cot.astype(jnp.float32))

    splash = lambda q, k, v: splash_attention(q, k, v, interpret=True)  # noqa: E731
    with jax.set_mesh(mesh):
        got = jax.jit(splash)(q, k, v)
        want = jax.jit(xla_attention)(q, k, v)
        grads = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
        ref = jax.jit(jax.grad(loss(xla_attention), argnums=(0, 1, 2)))(q, k, v)
    assert got.dtype == dtype
    for name, a, b in [("out", got, want), *zip(("dq", "dk", "dv"), grads, ref)]:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < tol, (name, err)
    # and the test can fail: a non-causal reference is far off
    full = jax.nn.dot_product_attention(q, k, v, is_causal=False)
    assert np.abs(np.asarray(got, np.float32) - np.asarray(full, np.float32)).max() > 10 * tol


# --- TPU compiles (libtpu) --------------------------------------------------------------------------------
def _param_bytes(cfg: Config) -> int:
    return count_params(cfg.model) * jnp.dtype(cfg.model.param_dtype).itemsize


@pytest.mark.slow
@needs_libtpu
def test_compile_for_v5e_2x2_token_and_patch_steps():
    """test-tiny with K = 4 on a v5e-4 (one host), fsdp over 4 chips, 128 positions (splash attention):
    both stages compile, fit in 16 GiB, and every parameter is all-gathered at least once per step."""
    cfg = Config.preset("test-tiny").override("training.patch_size=4", "mesh.data=1", "mesh.fsdp=-1",
                                              "data.seq_len=128", "training.steps=4")
    target = aot.resolve("v5e:2x2")
    assert (target.chips, target.hosts, target.hbm_bytes) == (4, 1, memory.TPU_AVAILABLE_BYTES["v5e"])
    reports = aot.compile_for_topology(cfg, target)
    assert [(r.stage, r.patch_size, r.seq_tokens) for r in reports] == [("patch", 4, 512), ("token", 1, 128)]
    for r in reports:
        assert r.fits and r.attention == "splash" and r.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
        m = r.memory
        assert m.argument_bytes >= 3 * _param_bytes(cfg) // 4  # its shard of parameters and two moments
        assert 0 < m.peak_bytes < target.hbm_bytes
        assert r.collectives["all-gather"].bytes >= _param_bytes(cfg)
        assert r.collectives["all-to-all"].count == 0


@pytest.mark.slow
@needs_libtpu
def test_compile_for_a_multi_host_slice_shows_data_parallel_collectives():
    """v5e:4x4 is 16 chips on 4 hosts; a data-parallel mesh gathers no parameters and all-reduces
    every gradient instead (a wrong sharding would show here)."""
    cfg = Config.preset("test-tiny").override("mesh.data=-1", "training.batch_size=16")
    target = aot.resolve("v5e:4x4")
    assert (target.chips, target.hosts, len(target.devices)) == (16, 4, 16)
    (report,) = aot.compile_for_topology(cfg, target)
    assert report.fits and report.mesh == {"data": 16, "fsdp": 1, "tensor": 1}
    assert report.collectives["all-gather"].bytes < _param_bytes(cfg) // 10
    assert report.collectives["all-reduce"].bytes + report.collectives["reduce-scatter"].bytes >= _param_bytes(cfg)


@pytest.mark.slow
@needs_libtpu
def test_oversized_config_is_refused_with_one_line(capsys):
    """A batch whose activations need ~200 GiB per chip is refused with the trainer's one-line error."""
    rc = main(["compile", "--topology", "v5e:2x2", "--config", "test-tiny", "training.batch_size=262144",
               "data.seq_len=128", "mesh.data=1", "mesh.fsdp=-1"])
    assert rc == 2
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out
    err = captured.err
    assert err.startswith("pcomp: error: the token step of model test-tiny (batch 262144 x 128 tokens, "
                          "model.remat=none)") and len(err.strip().splitlines()) == 1, err
    assert "training.grad_accum" in err


def test_colab_tpu_branch_is_the_fit_tables_row(monkeypatch):
    """The notebook's settings on a Colab TPU runtime are exactly those `experiments/tpu_fit.py` compiles for
    one v5e and one v6e chip (rows colab-v5e-1, colab-v6e-1), so "proven to fit" stays true."""
    import json

    from experiments.tpu_fit import COLAB, ROWS

    nb = json.loads((ROOT / "experiments" / "colab_demo.ipynb").read_text())
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    monkeypatch.delenv("PCOMP_NOTEBOOK_TINY", raising=False)
    params: dict = {}
    exec("".join(nb["cells"][1]["source"]), params)  # the parameters cell
    assert params["ON_TPU"] and params["PRESET"] == "25m"
    # what the training cell passes to Config.override, less the work directory and the progress bar
    used = [f"training.steps={params['STEPS']}", f"training.patch_size={params['PATCH_SIZE']}",
            "training.patch_fraction=2/3", "data.bos_first=true", *params["EXTRA"]]
    assert sorted(used) == sorted(COLAB)
    rows = {r[0]: (r[1], r[2], r[3]) for r in ROWS}
    assert rows["colab-v5e-1"] == ("25m", "v5e:1x1", COLAB) and rows["colab-v6e-1"] == ("25m", "v6e:1x1", COLAB)
