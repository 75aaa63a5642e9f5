"""The README's Python examples run as written (those that need no trained M1 on disk)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_quickstart_commands_exist():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    assert "make demo" in text and "make test" in text
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = [b for b in _python_blocks() if "runs/m1" not in b]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the training example writes runs/api here
    for block in blocks:
        exec(compile(block.replace("training.steps=50", "training.steps=5"), "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "config.json").is_file()
