"""Imports flow one way: config/errors -> models, patching, data -> train -> compress -> cli.

Each check runs in a fresh interpreter, so what earlier tests imported does not hide a violation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIGHER = ("pcomp.compress", "numba")  # must not be pulled in by the lower layers


def _imported_after(*modules: str) -> list[str]:
    """The modules of HIGHER present in sys.modules after importing `modules` in a fresh process."""
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HIGHER!r} "
            + f"or m.startswith({HIGHER[0]!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("modules", [
    ("pcomp.data",), ("pcomp.data.tokenizers",), ("pcomp.data.prepared",), ("pcomp.config", "pcomp.presets", "pcomp.errors"),
    ("pcomp.train.load",), ("pcomp.output",),
])
def test_lower_layers_do_not_import_compress_or_numba(modules):
    assert _imported_after(*modules) == []


@pytest.mark.slow
def test_trainer_does_not_import_compress_or_numba():
    assert _imported_after("pcomp.train.trainer") == []


@pytest.mark.slow
def test_loading_a_saved_compressed_tokenizer_registers_its_kind(tmp_path):
    """The data layer finds a compressed-text kind without naming pcomp.compress (entry point, else the
    module recorded in tokenizer.json), in a process that never imported it."""
    from pcomp.compress.tokenizers import GZipTokenizer

    GZipTokenizer(8).save(tmp_path / "tok")
    code = ("import sys\nfrom pcomp.data.tokenizers import load_tokenizer\n"
            f"tok = load_tokenizer({str(tmp_path / 'tok')!r})\n"
            "assert type(tok).__module__ == 'pcomp.compress.tokenizers', type(tok)\n"
            "assert tok.decode(tok.encode(b'abc abc abc')) == b'abc abc abc'\n"
            "print(tok.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "gzip"


def test_entry_point_registers_a_kind(tmp_path, monkeypatch):
    """A kind unknown to the registry is loaded from the `pcomp.tokenizers` entry points (faked here, so
    the test does not depend on the installed package metadata) and registered under its name."""
    import importlib.metadata

    from pcomp.data import tokenizers

    monkeypatch.setattr(tokenizers, "_REGISTRY", dict(tokenizers._REGISTRY))
    entry = importlib.metadata.EntryPoint("gzip_alias", "pcomp.compress.tokenizers:GZipTokenizer",
                                          tokenizers.ENTRY_POINT_GROUP)
    asked = []

    def entry_points(**kw):
        asked.append(kw)
        return [entry] if kw == {"group": tokenizers.ENTRY_POINT_GROUP, "name": "gzip_alias"} else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "gzip_alias", "token_bits": 16}))
    tok = tokenizers.load_tokenizer(tmp_path)
    assert asked == [{"group": tokenizers.ENTRY_POINT_GROUP, "name": "gzip_alias"}]
    assert type(tok).__name__ == "GZipTokenizer" and tok.token_bits == 16
    assert "gzip_alias" in tokenizers.registered_kinds()
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "no_such_kind"}))
    with pytest.raises(tokenizers.DataError, match="'no_such_kind'.*gzip_alias"):
        tokenizers.load_tokenizer(tmp_path)


def test_prepared_dataset_gives_the_vocabulary_from_its_metadata(tmp_path):
    from pcomp.data.prepared import DATASET_FILE, PreparedDataset

    (tmp_path / DATASET_FILE).write_text(json.dumps({"seq_len": 32, "vocab_size": 256, "tokenizer_dir": "tok",
                                                     "tokenizer_kind": "equal_info", "bos_id": None}))
    ds = PreparedDataset(tmp_path)
    assert (ds.vocab_size, ds.seq_len, ds.tokenizer_dir, ds.tokenizer_kind, ds.bos_id) == (
        256, 32, tmp_path / "tok", "equal_info", None)
    # an older dataset.json (no tokenizer fields): the default directory, the kind from its tokenizer.json
    (tmp_path / DATASET_FILE).write_text(json.dumps({"seq_len": 32, "vocab_size": 65536}))
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(json.dumps({"kind": "equal_info"}))
    ds = PreparedDataset(tmp_path)
    assert (ds.vocab_size, ds.tokenizer_dir, ds.tokenizer_kind, ds.bos_id) == (
        65536, tmp_path / "tokenizer", "equal_info", None)
