"""experiments/colab_demo.ipynb runs headless on CPU with its tiny settings, so it never rots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_demo.ipynb"


def _outputs(nb) -> str:
    """Everything the cells printed (stdout streams and plain-text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_colab_notebook_runs_headless_on_cpu(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    root = str(NOTEBOOK.parents[1])
    # the kernel inherits the environment: tiny settings, this
    # checkout's pcomp (so the install cell is skipped), CPU, and the suite's 8 simulated devices
    monkeypatch.setenv("PCOMP_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # kernel "python3" is this interpreter, whatever kernelspecs the machine has (JUPYTER_PATH is searched first)
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"],
                                                  "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    (tmp_path / "cwd").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path / "cwd")}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    text = _outputs(nb)
    assert "round trip equal: True" in text
    assert f"pcomp from {Path(root) / 'pcomp'}" in text  # this checkout, not an installed copy
    assert any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
    assert (tmp_path / "cwd" / "runs" / "colab" / "summary.json").is_file()
    # the window view: '|'-separated pieces that join back to the paragraph
    marked = text.split("marks each window's end:\n")[1].strip().splitlines()[0]
    assert marked.endswith("|") and marked.count("|") >= 2
    assert marked.replace("|", "").startswith("The Python tutorial introduces")
