"""Configs: every value type-checked by one parser (override strings and JSON values), every range
checked, and any bad input, of any shape, a one-line ConfigError naming the key and what was expected."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcomp.config import (
    Config,
    DataConfig,
    MeshConfig,
    ModelConfig,
    TrainingConfig,
    check_mesh_fits_model,
    from_dict,
    parse_value,
)
from pcomp.presets import MODEL_PRESETS, RUN_PRESETS
from pcomp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "mesh": MeshConfig}
FIELDS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
TINY = Config.preset("test-tiny")


def _one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    return msg


# --- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, typ, expected",
    [
        ("12", int, 12), ("-3", int, -3), ("1e4", int, 10000), ("2.5e3", int, 2500), ("1_000", int, 1000),
        ("1e-3", float, 0.001), ("2/3", float, 2 / 3), ("7", float, 7.0), ("inf", float, math.inf),
        ("true", bool, True), ("Off", bool, False), ("1", bool, True),
        ("", str, ""), ("a b=c", str, "a b=c"),
    ],
)
def test_parse_override_text(text, typ, expected):
    value = parse_value(text, typ, "k", text=True)
    assert value == expected and type(value) is typ


@pytest.mark.parametrize(
    "text, typ",
    [("abc", int), ("1.5", int), ("1e-3", int), ("nan", int), ("inf", int), ("1e400", int), ("", int),
     ("fast", float), ("1/0", float), ("1/2/3", float), ("", float),
     ("maybe", bool), ("2", bool)],
)
def test_parse_override_text_rejects(text, typ):
    msg = _one_line_error(lambda: parse_value(text, typ, "training.x", text=True))
    assert f"bad value {text!r} for training.x: expected" in msg


@pytest.mark.parametrize(
    "value, typ, expected",
    [(3, int, 3), (3, float, 3.0), (0.5, float, 0.5), (True, bool, True), ("x", str, "x")],
)
def test_parse_json_value(value, typ, expected):
    parsed = parse_value(value, typ, "k")
    assert parsed == expected and type(parsed) is typ


@pytest.mark.parametrize(
    "value, typ, shown, what",
    [
        ("abc", int, '"abc"', "an integer"), ("12", int, '"12"', "an integer"), (None, int, "null", "an integer"),
        (True, int, "true", "an integer"), (3.0, int, "3.0", "an integer"), (10.5, int, "10.5", "an integer"),
        ([1], int, "[1]", "an integer"), ({"a": 1}, float, '{"a": 1}', "a number"), (False, float, "false", "a number"),
        ("0.1", float, '"0.1"', "a number"), (0, bool, "0", "true or false"), ("true", bool, '"true"', "true or false"),
        (5, str, "5", "a string"), (None, str, "null", "a string"),
    ],
)
def test_parse_json_value_rejects_wrong_types(value, typ, shown, what):
    msg = _one_line_error(lambda: parse_value(value, typ, "training.steps"))
    assert msg == f"bad value {shown} for training.steps: expected {what}"


# --- JSON config files ----------------------------------------------------------------------------


def test_every_preset_round_trips_through_json():
    for name, cfg in RUN_PRESETS.items():
        assert from_dict(json.loads(cfg.to_json())) == cfg, name
        assert cfg.validate() is cfg


@pytest.mark.parametrize(
    "content, needles",
    [
        (b"\xff\xfe{}", ["is not UTF-8", "0xff"]),
        (b"[1, 2]", ["holds a JSON array", "expected an object"]),
        (b'"text"', ["holds a JSON string"]),
        (b"null", ["holds a JSON null"]),
        (b'{"training": {"steps": "abc"}}', ['bad value "abc" for training.steps: expected an integer']),
        (b'{"training": 5}', ["config section 'training'", "JSON number (5)", "expected an object"]),
        (b'{"model": {"d_model": [256]}}', ["bad value [256] for model.d_model"]),
        (b'{"data": {"seq_len": {"a": 1}}}', ['bad value {"a": 1} for data.seq_len']),
        (b'{"training": {"steps": null}}', ["bad value null for training.steps"]),
        (b'{"training": {"steps": true}}', ["bad value true for training.steps: expected an integer"]),
        (b'{"training": {"steps": 100.0}}', ["bad value 100.0 for training.steps: expected an integer"]),
        (b'{"training": {"lr": "1e-3"}}', ['bad value "1e-3" for training.lr: expected a number']),
        (b'{"model": {"tie_embeddings": 1}}', ["bad value 1 for model.tie_embeddings: expected true or false"]),
        (b'{"data": {"source": 7}}', ["bad value 7 for data.source: expected a string"]),
        (b'{"training": {"nope": 1}}', ["unknown keys ['nope'] in config section 'training'"]),
        (b'{"extra": {}}', ["unknown config sections ['extra']"]),
        (b'{"training": {"lr": NaN}}', ["training.lr=nan must be a finite number > 0"]),
        (b'{"training": {"lr": 1e999}}', ["training.lr=inf must be a finite number > 0"]),
        (b"[" * 100_000, ["config file"]),
        (b"{", ["is not valid JSON"]),
    ],
)
def test_bad_config_files(tmp_path, content, needles):
    path = tmp_path / "cfg.json"
    path.write_bytes(content)
    msg = _one_line_error(lambda: Config.load(str(path)).validate())
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_config_path_that_is_a_directory(tmp_path):
    (tmp_path / "d.json").mkdir()
    assert "is a directory" in _one_line_error(lambda: Config.load(str(tmp_path / "d.json")))


def test_ints_are_accepted_for_float_fields_and_kept_as_float(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"training": {"lr": 1, "grad_clip": 2}}')
    cfg = Config.load(str(path))
    assert (cfg.training.lr, cfg.training.grad_clip) == (1.0, 2.0) and type(cfg.training.lr) is float


# --- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_model=-3", "model.d_model=-3 must be >= 1"),
        ("model.n_heads=0", "model.n_heads=0 must be >= 1"),
        ("model.n_kv_heads=-1", "model.n_kv_heads=-1 must be >= 0 (0 = n_heads)"),
        ("model.vocab_size=0", "model.vocab_size=0 must be >= 1"),
        ("model.rope_theta=0", "model.rope_theta=0.0 must be a finite number > 0"),
        ("model.norm_eps=nan", "model.norm_eps=nan must be a finite number > 0"),
        ("model.init_std=-0.02", "model.init_std=-0.02 must be a finite number > 0"),
        ("model.d_model=66", "model.d_model=66 is not divisible by model.n_heads=4"),
        ("model.remat=true", "model.remat='true'; expected one of 'none', 'full', 'dots_saveable'"),
        ("model.scan_unroll=0", "model.scan_unroll=0 must be >= 1"),
        ("model.remat=dots", "model.remat='dots'; expected one of 'none', 'full', 'dots_saveable'"),
        ("training.lr=nan", "training.lr=nan must be a finite number > 0"),
        ("training.lr=-1", "training.lr=-1.0 must be a finite number > 0"),
        ("training.lr=0", "training.lr=0.0 must be a finite number > 0"),
        ("training.lr=inf", "training.lr=inf must be a finite number > 0"),
        ("training.min_lr_ratio=1.5", "training.min_lr_ratio=1.5 must be in [0, 1]"),
        ("training.min_lr_ratio=nan", "training.min_lr_ratio=nan must be in [0, 1]"),
        ("training.weight_decay=-0.1", "training.weight_decay=-0.1 must be a finite number >= 0"),
        ("training.weight_decay=inf", "training.weight_decay=inf must be a finite number >= 0"),
        ("training.b1=1", "training.b1=1.0 must be in [0, 1)"),
        ("training.b2=-0.5", "training.b2=-0.5 must be in [0, 1)"),
        ("training.grad_clip=0", "training.grad_clip=0.0 must be a finite number > 0"),
        ("training.z_loss=-1e-4", "training.z_loss=-0.0001 must be a finite number >= 0"),
        ("training.patch_fraction=nan", "training.patch_fraction=nan must be in [0, 1]"),
        ("training.batch_size=0", "training.batch_size=0 must be >= 1"),
        ("training.grad_accum=0", "training.grad_accum=0 must be >= 1"),
        ("training.grad_accum=3", "training.batch_size=8 must be divisible by training.grad_accum=3"),
        ("training.warmup_steps=-1", "training.warmup_steps=-1 must be >= 0"),
        ("training.eval_every=-5", "training.eval_every=-5 must be >= 0"),
        ("training.seed=-1", "training.seed=-1 must be in [0, 2**32)"),
        ("training.seed=4294967296", "training.seed=4294967296 must be in [0, 2**32)"),
        ("training.workdir=", "training.workdir is empty"),
        ("data.seq_len=1", "data.seq_len=1 must be >= 2"),
        ("data.eval_fraction=1", "data.eval_fraction=1.0 must be in [0, 1)"),
        ("data.eval_max_bytes=-1", "data.eval_max_bytes=-1 must be >= 0 (0 = all)"),
        ("data.read_threads=-1", "data.read_threads=-1 must be >= 0"),
        ("data.source=", "data.source is empty"),
        ("data.tokenizer=", "data.tokenizer is empty"),
        ("mesh.fsdp=0", "mesh.fsdp=0 must be >= 1, or -1"),
        ("mesh.tensor=-2", "mesh.tensor=-2 must be >= 1, or -1"),
        ("mesh.tensor=8", "mesh.tensor=8 does not divide model.n_heads=4; mesh.tensor must divide model.n_heads=4, "
                          "model.n_kv_heads=4, model.d_ff=128, the padded vocabulary=384"),
        ("mesh.fsdp=128", "mesh.fsdp=128 does not divide model.d_model=64"),
    ],
)
def test_out_of_range_values_are_config_errors(override, message):
    msg = _one_line_error(lambda: TINY.override(override).validate())
    assert msg.startswith(message), msg


@pytest.mark.parametrize("policy", ["none", "full", "dots_saveable"])
def test_remat_policies_are_accepted(policy):
    assert TINY.override(f"model.remat={policy}").validate().model.remat == policy


def test_config_json_with_a_boolean_remat_is_a_clear_error(tmp_path):
    """model.remat names a policy; a true/false (what pcomp wrote before 0.1.0) is named, not guessed."""
    raw = json.loads(TINY.to_json())
    raw["model"]["remat"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    msg = _one_line_error(lambda: Config.load(str(path)).validate())
    assert "model.remat" in msg and "true" in msg and "expected a string" in msg, msg


def test_two_rest_axes():
    msg = _one_line_error(lambda: TINY.override("mesh.data=-1", "mesh.fsdp=-1").validate())
    assert msg.startswith("mesh.data=-1 and mesh.fsdp=-1: at most one mesh axis may be -1")


def test_configs_built_in_python_are_type_checked():
    bad = dataclasses.replace(TINY, training=dataclasses.replace(TINY.training, steps="abc"))
    assert _one_line_error(bad.validate) == "training.steps=\"abc\" is a str; expected int"
    bad = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, d_model=True))
    assert "model.d_model=true is a bool" in _one_line_error(bad.validate)
    bad = dataclasses.replace(TINY, mesh=5)
    assert "config section 'mesh' is a int" in _one_line_error(bad.validate)


def test_mesh_fits_model():
    model = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, vocab_size=258)  # padded vocab 384
    check_mesh_fits_model({"data": 8, "fsdp": 4, "tensor": 2}, model)
    for sizes, needle in [
        ({"tensor": 4}, "mesh.tensor=4 does not divide model.n_kv_heads=2"),
        ({"tensor": 8}, "mesh.tensor=8 does not divide model.n_heads=4"),
        ({"fsdp": 3}, "mesh.fsdp=3 does not divide model.d_model=64"),
    ]:
        assert _one_line_error(lambda: check_mesh_fits_model(sizes, model)).startswith(needle)
    model = dataclasses.replace(model, n_kv_heads=0, d_ff=102)
    assert _one_line_error(lambda: check_mesh_fits_model({"tensor": 4}, model)).startswith(
        "mesh.tensor=4 does not divide model.d_ff=102")
    model = dataclasses.replace(model, d_ff=128, vocab_size=4000)  # padded vocabulary 4096
    check_mesh_fits_model({"tensor": 4, "data": -1, "fsdp": -1}, model)  # -1 axes are checked by make_mesh


@pytest.mark.parametrize(
    "model, mesh_cfg, message",
    [
        (TINY.model, MeshConfig(data=1, fsdp=1, tensor=8), "mesh.tensor=8 does not divide model.n_heads=4 (parameter"),
        (dataclasses.replace(TINY.model, n_kv_heads=2), MeshConfig(data=2, fsdp=1, tensor=4),
         "mesh.tensor=4 does not divide the KV heads (model.n_kv_heads, 0 = n_heads)=2"),
        (dataclasses.replace(TINY.model, d_ff=102), MeshConfig(data=2, fsdp=1, tensor=4),
         "mesh.tensor=4 does not divide model.d_ff=102"),
        (dataclasses.replace(TINY.model, d_model=36, n_heads=2), MeshConfig(data=1, fsdp=8, tensor=1),
         "mesh.fsdp=8 does not divide model.d_model=36"),
    ],
)
def test_param_shardings_refuse_a_mesh_that_does_not_divide_the_model(model, mesh_cfg, message):
    """The training path (state shardings from an abstract state, before any compile)."""
    from pcomp.models.sharding import make_mesh, param_shardings
    from pcomp.train.step import abstract_model

    _, abstract = abstract_model(model)
    mesh = make_mesh(mesh_cfg)
    assert _one_line_error(lambda: param_shardings(abstract, mesh)).startswith(message)
    msg = _one_line_error(lambda: make_mesh(mesh_cfg, model=model))  # the same check, from the config
    assert msg.startswith(message.split(" (parameter")[0].replace("the KV heads (model.n_kv_heads, 0 = n_heads)",
                                                                   "model.n_kv_heads")), msg


def test_make_mesh_checks_the_model_after_resolving_the_rest_axis():
    from pcomp.models.sharding import make_mesh

    # 8 simulated devices (conftest): tensor=-1 takes all 8, which does not divide 4 heads
    msg = _one_line_error(lambda: make_mesh(MeshConfig(data=1, fsdp=1, tensor=-1), model=TINY.model))
    assert msg.startswith("mesh.tensor=8 does not divide model.n_heads=4")
    assert dict(make_mesh(MeshConfig(data=2, fsdp=1, tensor=-1), model=TINY.model).shape)["tensor"] == 4


# --- property tests: any override, any JSON -------------------------------------------------------

_texts = st.text(max_size=12)
_numbers_text = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e4", "1e-3", "2/3", "1/0", "true", "false", "0", "-1", "", " 3 ",
                     "1e400", "0x10", "1_0"]),
)


@st.composite
def _override(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(_texts)  # anything, usually without '='
    if kind == 1:
        return "model=" + draw(st.one_of(_texts, st.sampled_from(sorted(MODEL_PRESETS))))
    section = draw(st.one_of(st.sampled_from(sorted(SECTIONS)), _texts))
    keys = sorted(FIELDS.get(section, {})) or ["x"]
    key = draw(st.one_of(st.sampled_from(keys), _texts)) if kind == 2 else draw(st.sampled_from(keys))
    value = draw(st.one_of(_texts, _numbers_text))
    return f"{section}.{key}={value}"


@settings(max_examples=200, deadline=None)
@given(st.lists(_override(), min_size=1, max_size=4))
def test_random_overrides_give_a_config_or_one_config_error(overrides):
    try:
        cfg = TINY.override(*overrides).validate()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, Config)
    assert from_dict(json.loads(cfg.to_json())) == cfg  # a valid config survives config.json


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), _texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_texts, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def _json_config(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(_json)
    raw = json.loads(TINY.to_json())
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(SECTIONS)))
        if not isinstance(raw.get(section), dict):  # replaced by an earlier round
            raw[section] = {}
        if kind == 1:  # a real key, any JSON value
            raw[section][draw(st.sampled_from(sorted(FIELDS[section])))] = draw(_json)
        elif kind == 2:  # a real key, a scalar of a plausible type
            key = draw(st.sampled_from(sorted(FIELDS[section])))
            raw[section][key] = draw(st.one_of(st.integers(-5, 300), st.floats(), st.booleans(), _texts))
        else:  # a whole section or an unknown key replaced by anything
            target = raw if draw(st.booleans()) else raw[section]
            target[draw(st.one_of(st.sampled_from(sorted(SECTIONS)), _texts))] = draw(_json)
    return raw


@settings(max_examples=200, deadline=None)
@given(_json_config())
def test_random_json_configs_give_a_config_or_one_config_error(raw):
    try:
        cfg = from_dict(raw).validate()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, Config)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=40) | _json_config().map(lambda raw: json.dumps(raw).encode()))
def test_random_config_files_give_a_config_or_one_config_error(tmp_path, content):
    path = tmp_path / "random.json"
    path.write_bytes(content)
    try:
        Config.load(str(path)).validate()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


# --- the CLI, as a user runs it -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, content, needle",
    [
        (["train", "--config", "{cfg}"], b"\xff\x00\x01", "is not UTF-8"),
        (["train", "--config", "{cfg}"], b'{"training": {"steps": "abc"}}', 'bad value "abc" for training.steps'),
        (["generate", "--checkpoint", "{tmp}", "--prompt", "x", "--temperature", "nan"], None, "--temperature nan"),
    ],
)
def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys, args, content, needle):
    """Config files and flags as `pcomp` reads them (tests/test_cli.py has the other values; the
    subprocess test below, the real entry point)."""
    from pcomp.cli import main

    cfg, work = tmp_path / "cfg.json", tmp_path / "work"
    if content is not None:
        cfg.write_bytes(content)
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    if argv[0] == "train":
        argv.append(f"training.workdir={work}")
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcomp: error: ") and needle in lines[0], lines
    assert not work.exists()  # refused before set-up: no work directory, nothing compiled


@pytest.mark.slow
def test_the_entry_point_exits_2_with_one_line_and_no_traceback(tmp_path):
    """`python -m pcomp` with a bad value: exit status 2, one `pcomp: error:` line, nothing set up."""
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", "pcomp", "train", "--config", "test-tiny", "training.lr=nan",
                           f"training.workdir={work}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcomp: error: ") and "training.lr=nan" in lines[0], proc.stderr
    assert not work.exists()
