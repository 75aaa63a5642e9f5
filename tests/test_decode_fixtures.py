"""Files made by an earlier pcomp still decode, to the same bytes (issue #27: a faster decoder must
not change a single bit of what M1 computes).

The files under tests/fixtures/decode/ were made by `python tests/test_decode_fixtures.py
--regenerate` (which writes the missing ones): the four "tiny" ones with the code of main at 978935b
(before #27's first changes), the two "m1-3m" ones at 9661e57 (before the per-layer decode step).
The M1 they need is rebuilt here, bit for bit, from a seed: an untrained test-tiny model (max_seq_len
40, trained context 16) or m1-3m model (the CPU's matmul kernels depend on the shapes), with
init_std 0.3, so that its distributions are peaked and the quantized tables depend on the logits'
low bits. The header's M1 fingerprint pins it: if the
initialisation ever changes, decoding fails with "made with M1 ...", never with wrong bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import pytest

from pcomp.compress import codec, fileformat
from pcomp.config import CompressConfig

FIXTURES = Path(__file__).parent / "fixtures" / "decode"
TEXT = (b"It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        b"foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
        b"it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n")
# (file name, M1, mode, settings, original): small and default batches, both modes, two M1 shapes
CASES = [
    ("best-b8-s48", "tiny", "best", CompressConfig(m1_batch=8, segment_bytes=48), TEXT + bytes(range(256))),
    ("best-default", "tiny", "best", CompressConfig(), TEXT * 7 + bytes(range(256))),
    ("windows-b8-s48", "tiny", "windows", CompressConfig(m1_batch=8, segment_bytes=48), TEXT + bytes(range(256))),
    ("windows-default", "tiny", "windows", CompressConfig(), TEXT * 3 + bytes(range(256))),
    ("best-m1-3m", "m1-3m", "best", CompressConfig(), TEXT * 2 + bytes(range(256))),
    ("windows-m1-3m-b8", "m1-3m", "windows", CompressConfig(m1_batch=8), TEXT + bytes(range(256))),
]


def fixture_m1_model(kind: str = "tiny"):
    """The fixtures' M1, rebuilt deterministically (no training, no checkpoint): "tiny" or "m1-3m"."""
    from flax import nnx

    from pcomp.config import Config, DataConfig
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel

    if kind == "tiny":
        cfg, seq_len = dataclasses.replace(Config.preset("test-tiny").model, max_seq_len=40, init_std=0.3), 16
    else:
        cfg, seq_len = dataclasses.replace(Config.preset("m1-3m").model, init_std=0.3), 128
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(7)))
    return TrainedModel(Config(model=cfg, data=DataConfig(bos_first=True, seq_len=seq_len)), ByteTokenizer(),
                        graphdef, params, 0, Path("in-memory"))


@pytest.fixture(scope="module")
def models():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("name,kind,mode,cfg,original", CASES, ids=[c[0] for c in CASES])
def test_old_files_decode_to_the_same_bytes(models, name, kind, mode, cfg, original):
    if kind not in models:
        models[kind] = fixture_m1_model(kind)
    blob = (FIXTURES / f"{name}.pcomp").read_bytes()
    manifest = json.loads((FIXTURES / "manifest.json").read_text())[name]
    assert hashlib.sha256(original).hexdigest() == manifest["original_sha256"]
    header, _ = fileformat.unpack(blob)
    from_header = ("window_bits", "token_bits") + (("m1_batch", "segment_bytes") if mode == "best" else ())
    assert header["mode"] == mode and codec.config_of(header) == dataclasses.replace(cfg, **{
        k: header[k] for k in from_header if k in header})  # best: the layout (codec.best_layout) sets two
    m1 = codec.m1_for(models[kind], codec.config_of(header), mode, context=header["m1_context"])
    assert codec.decompress(m1, blob, name) == original


def _regenerate(force: bool) -> None:
    """Write the fixture files that are missing (all of them with force)."""
    path = FIXTURES / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for name, kind, mode, cfg, original in CASES:
        if (FIXTURES / f"{name}.pcomp").exists() and name in manifest and not force:
            continue
        m1 = codec.m1_for(fixture_m1_model(kind), cfg, mode)
        blob = codec.compress(m1, original, cfg, mode=mode)
        assert codec.decompress(m1, blob) == original
        (FIXTURES / f"{name}.pcomp").write_bytes(blob)
        manifest[name] = {"mode": mode, "original_bytes": len(original), "file_bytes": len(blob),
                          "original_sha256": hashlib.sha256(original).hexdigest(),
                          "file_sha256": hashlib.sha256(blob).hexdigest()}
        print(name, len(original), "->", len(blob))
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] not in (["--regenerate"], ["--regenerate", "--force"]):
        sys.exit("usage: python tests/test_decode_fixtures.py --regenerate [--force]  (writes the missing files "
                 "of tests/fixtures/decode/; --force rewrites them all)")
    _regenerate(force="--force" in sys.argv)
