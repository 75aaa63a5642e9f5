"""--profile of experiments/bench_vs_torch.py: the trace parsers map each op's time to the right category."""

from __future__ import annotations

import types

import pytest

from experiments import bench_vs_torch as bench

# A hand-written optimized-HLO module in the format of `jax.stages.Compiled.as_text()`: its stack-frame
# tables and one fusion of each kind the breakdown distinguishes.
HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/src/pcomp/models/transformer.py"
2 "/venv/site-packages/optax/_src/transform.py"
3 "/src/pcomp/patching/loss.py"

FunctionNames
1 "dense"
2 "blocked_causal_attention"
3 "scale_by_adam.<locals>.update_fn"
4 "next_patch_nll"
5 "RMSNorm.__call__"
6 "Attention.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=50 end_line=50 column=1 end_column=9}
2 {file_name_id=1 function_name_id=2 line=80 end_line=80 column=1 end_column=9}
3 {file_name_id=2 function_name_id=3 line=10 end_line=10 column=1 end_column=9}
4 {file_name_id=3 function_name_id=4 line=62 end_line=62 column=1 end_column=9}
5 {file_name_id=1 function_name_id=5 line=38 end_line=38 column=1 end_column=9}
6 {file_name_id=1 function_name_id=6 line=120 end_line=120 column=1 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=1}
3 {file_location_id=3 parent_frame_id=1}
4 {file_location_id=4 parent_frame_id=1}
5 {file_location_id=5 parent_frame_id=1}
6 {file_location_id=6 parent_frame_id=1}

%fused_computation.1 (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.9 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=2}
}

%fused_computation.4 (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  %d = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=1}
  ROOT %t = f32[4,4]{0,1} transpose(%d), dimensions={1,0}, metadata={op_name="jit(train_step)/transpose" stack_frame_id=6}
}

%fused_computation.2 (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  %m = f32[4]{0} multiply(%p0, %p0), metadata={op_name="jit(train_step)/mul" stack_frame_id=3}
  ROOT %s = f32[4]{0} sqrt(%m), metadata={op_name="jit(train_step)/sqrt" stack_frame_id=3}
}

%fused_computation.3 (p0: f32[4,4]) -> f32[4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %e = f32[4,4]{1,0} exponential(%p0), metadata={op_name="jit(train_step)/exp" stack_frame_id=4}
  %c = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%e, %c), dimensions={1}, to_apply=%add_comp
}

%add_comp (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add = f32[] add(%a, %b)
}

ENTRY %main.7 (x: f32[4,4], w: f32[4,4], v: f32[4]) -> (f32[4,4], f32[4]) {
  %x = f32[4,4]{1,0} parameter(0)
  %w = f32[4,4]{1,0} parameter(1)
  %v = f32[4]{0} parameter(2)
  %dot.1 = f32[4,4]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=1}
  %ynn_fusion.3 = f32[4,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=2}
  %ynn_fusion.8 = f32[4,4]{0,1} fusion(%x, %w), kind=kCustom, calls=%fused_computation.4, metadata={op_name="jit(train_step)/transpose" stack_frame_id=6}
  %adam_fusion = f32[4]{0} fusion(%v), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(train_step)/sqrt" stack_frame_id=3}
  %lse_fusion = f32[4]{0} fusion(%dot.1), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(train_step)/exp" stack_frame_id=4}
  %norm.2 = f32[4]{0} rsqrt(%v), metadata={op_name="jit(train_step)/rsqrt" stack_frame_id=5}
  %copy.4 = f32[4]{0} copy(%norm.2)
  ROOT %tuple.5 = (f32[4,4]{1,0}, f32[4]{0}) tuple(%ynn_fusion.3, %adam_fusion)
}
"""


def _event(op, dur_us, module="jit_train_step"):
    return {"ph": "X", "name": op, "dur": dur_us, "args": {"hlo_module": module, "hlo_op": op}}


def test_jax_breakdown_maps_each_traced_op_to_its_category():
    events = [
        _event("dot.1", 100.0), _event("dot.1", 300.0),  # two steps: 200 us per step of a dense matmul
        _event("ynn_fusion.3", 40.0),  # a fused dot from an attention function
        _event("ynn_fusion.8", 10.0),  # a projection's dot fused with a transpose from Attention.__call__
        _event("adam_fusion", 60.0),  # elementwise code from optax
        _event("lse_fusion", 8.0),  # exp + reduce from the loss
        _event("norm.2", 4.0),  # a bare op from the model's norm
        _event("copy.4", 2.0),  # no frame: overhead
        _event("tuple.5", 1000.0),  # control flow / tuples are not ops of their own
        _event("dot.1", 5000.0, module="jit_init"),  # another module: ignored
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000.0},  # not an op event
    ]
    got = bench.jax_breakdown(events, HLO, steps=2)
    want = {"matmul": 205e-6, "attention": 20e-6, "optimizer": 30e-6, "softmax/CE": 4e-6,
            "norm/rope/elementwise": 2e-6, "other/overhead": 1e-6}
    assert set(got) == set(bench.CATEGORIES)
    for c, v in want.items():
        assert got[c] == pytest.approx(v), c


def test_parse_hlo_expands_fusions_and_frames():
    ops, frames = bench.parse_hlo(HLO)
    assert ops["ynn_fusion.3"][0] == ["fusion", "parameter", "parameter", "dot"]
    assert ops["lse_fusion"][1] == {4}
    assert ops["ynn_fusion.8"][1:] == ({1, 6}, {1})  # all frames; those of its dots
    assert "add" in ops["lse_fusion"][0]  # the reducer computation called from inside the fusion
    assert frames[3] == ("/venv/site-packages/optax/_src/transform.py", "scale_by_adam.<locals>.update_fn")
    assert ops["tuple.5"][0] == ["tuple"]


def _fe(name, self_us, parent=None):
    return types.SimpleNamespace(name=name, self_cpu_time_total=self_us, cpu_parent=parent)


def test_torch_breakdown_uses_names_and_enclosing_optimizer():
    step = _fe("Optimizer.step#AdamW.step", 5.0)
    clip = _fe("clip_grad_norm", 1.0)
    bwd = _fe("autograd::engine::evaluate_function: MmBackward0", 3.0)
    events = [
        _fe("aten::mm", 100.0), _fe("aten::mm", 50.0, bwd), bwd,
        _fe("aten::_scaled_dot_product_flash_attention_for_cpu", 20.0),
        _fe("aten::_log_softmax", 6.0), _fe("aten::nll_loss_forward", 2.0),
        _fe("aten::mul", 10.0), _fe("graph_0_cpp_fused_add_mean_mul_pow_rsqrt_0", 4.0),
        step, _fe("aten::mul", 30.0, step), _fe("aten::linalg_vector_norm", 7.0, clip), clip,
    ]
    got = bench.torch_breakdown(events, steps=1)
    want = {"matmul": 150e-6, "attention": 20e-6, "softmax/CE": 8e-6, "norm/rope/elementwise": 14e-6,
            "optimizer": 43e-6, "other/overhead": 3e-6}
    for c, v in want.items():
        assert got[c] == pytest.approx(v), c


def test_breakdown_table_puts_unattributed_wall_time_into_overhead():
    cats = dict.fromkeys(bench.CATEGORIES, 0.0) | {"matmul": 0.006, "other/overhead": 0.001}
    table = bench.breakdown_table({"pcomp": (cats, 0.010)})
    assert "| matmul | 6.0 (60%) |" in table
    assert "| other/overhead | 4.0 (40%) |" in table  # 1 ms of ops + 3 ms not in any op
    assert table.splitlines()[-1] == "| wall (profiled) | 10.0 |"
