"""The documentation's examples work as written (README.md, docs/*.md, experiments/README.md): every
```python block runs (in a fresh interpreter, in a
temporary directory, at tiny sizes; the compression example against the test session's trained M1),
every `pcomp ...` command line of its ```bash blocks parses with the real argument parser and config
overrides, and its `make` targets exist and run what it says."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcomp.cli import build_parser
from pcomp.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]


def _blocks(lang: str) -> list[str]:
    return [b for doc in DOCS for b in re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), flags=re.S)]


def _needs_training(block: str) -> bool:
    return "train(" in block or "runs/m1" in block or "runs/api" in block


API_BLOCK = next(b for b in _blocks("python") if "training.workdir=runs/api" in b)


# each distinct block once (the API example is in README.md and docs/cli.md, word for word)
PYTHON_BLOCKS = [pytest.param(b, id=f"block{i}", marks=[pytest.mark.slow] if _needs_training(b) else [])
                 for i, b in enumerate(dict.fromkeys(_blocks("python")))]


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_readme_has_the_examples_these_tests_run():
    assert len(DOCS) >= 6 and all(doc.is_file() for doc in DOCS)
    assert len(README.read_text().splitlines()) <= 160  # details live in docs/
    assert len(PYTHON_BLOCKS) >= 3
    assert sum(not _needs_training(p.values[0]) for p in PYTHON_BLOCKS) >= 1
    assert len(_cli_lines()) >= 10


def _api_block_run(shared) -> tuple[Path, subprocess.CompletedProcess]:
    """The API example run once per test session (5 steps, not 50) in a shared directory: (that
    directory, the run's process)."""
    with shared("readme-api") as cwd:
        if not (cwd / "proc.json").is_file():
            cwd.mkdir(exist_ok=True)
            proc = _run_python(API_BLOCK.replace("training.steps=50", "training.steps=5"), cwd)
            (cwd / "proc.json").write_text(json.dumps([proc.args, proc.returncode, proc.stdout, proc.stderr]))
    return cwd, subprocess.CompletedProcess(*json.loads((cwd / "proc.json").read_text()))


@pytest.mark.parametrize("block", PYTHON_BLOCKS)
def test_readme_python_block_runs(block, tmp_path, request):
    """Each block as written, except: the training example's 50 steps become 5, and `runs/m1` is the
    test session's trained test-tiny M1 (`m1_run` in conftest.py); blocks that use the API example's
    `runs/api` run beside a copy of it."""
    code = block.replace("training.steps=50", "training.steps=5")
    if "runs/m1" in code:
        code = code.replace('"runs/m1"', repr(str(request.getfixturevalue("m1_run"))))
    if "training.workdir=runs/api" in block:  # it trained where it says, and printed the held-out bits/byte
        cwd, proc = _api_block_run(request.getfixturevalue("shared"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((cwd / "runs" / "api" / "summary.json").read_text())
        assert proc.stdout.strip().splitlines()[-1] == str(summary["eval"]["eval/bits_per_byte"])
        return
    if "runs/api" in code:  # uses the API example's run
        cwd, first = _api_block_run(request.getfixturevalue("shared"))
        assert first.returncode == 0, first.stderr[-3000:]
        shutil.copytree(cwd / "runs" / "api", tmp_path / "runs" / "api")
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- the command lines ---------------------------------------------------------------------------------
def _cli_lines() -> list[list[str]]:
    """argv (without the leading `pcomp`) of every command line in the README's bash blocks."""
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("pcomp "):
                lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.parametrize("argv", _cli_lines(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_line_parses(argv):
    """The subcommand and flags exist (argparse exits on an unknown one), and the overrides of
    `pcomp train` / `pcomp demo` / `pcomp compile` are valid keys and values of the preset's config (run configs named
    as runs/.../config.json do not exist here: their overrides are checked against `demo`)."""
    args = build_parser().parse_args(argv)
    if args.command in ("train", "demo", "compile"):
        base = getattr(args, "config", "demo")
        cfg = Config.load("demo" if base.endswith(".json") else base)
        cfg.override(*args.overrides).validate()


def test_readme_make_targets_run_what_it_says(tmp_path):
    """`make demo` runs `pcomp demo`; `make test` runs pytest on tests/ on 8 simulated devices;
    `make test-fast` the same without the slow tests; `.ci/run` is `make test` (dry runs: make -n)."""
    def dry(target):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
        proc = subprocess.run(["make", "--no-print-directory", "-n", f"VENV={tmp_path}/venv", target], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()[-1]

    readme = README.read_text()
    assert "make demo" in readme and "make test" in readme
    assert dry("demo") == f"{tmp_path}/venv/bin/pcomp demo"
    flags = "XLA_FLAGS=--xla_force_host_platform_device_count=8"
    assert re.fullmatch(rf"{flags} {tmp_path}/venv/bin/python -m pytest -q .* tests", dry("test"))
    fast = dry("test-fast")
    assert fast.startswith(f"{flags} {tmp_path}/venv/bin/python -m pytest") and '-m "not slow"' in fast
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()
