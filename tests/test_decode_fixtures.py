"""Files made by an earlier pcomp still decode, to the same bytes (issue #27: a faster decoder must
not change a single bit of what M1 computes).

The files under tests/fixtures/decode/ were made with the code of main at 978935b (before #27's
changes) by `python tests/test_decode_fixtures.py --regenerate` (which rewrites them: only do that
on purpose). A manual check at m1-3m's shapes (a 300-byte best file made by 978935b with batch 256,
decoded by the new code) passed too; it is not a test because it takes minutes. The M1 they need is rebuilt here, bit for bit, from a seed: an untrained test-tiny
model (max_seq_len 40, trained context 16) with init_std 0.3, so that its distributions are peaked
and the quantized tables depend on the logits' low bits. The header's M1 fingerprint pins it: if the
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
# (file name, mode, settings, original): small and default batches, both modes
CASES = [
    ("best-b8-s48", "best", CompressConfig(m1_batch=8, segment_bytes=48), TEXT + bytes(range(256))),
    ("best-default", "best", CompressConfig(), TEXT * 7 + bytes(range(256))),
    ("windows-b8-s48", "windows", CompressConfig(m1_batch=8, segment_bytes=48), TEXT + bytes(range(256))),
    ("windows-default", "windows", CompressConfig(), TEXT * 3 + bytes(range(256))),
]


def fixture_m1_model():
    """The fixtures' M1, rebuilt deterministically (no training, no checkpoint)."""
    from flax import nnx

    from pcomp.config import Config, DataConfig
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel

    cfg = dataclasses.replace(Config.preset("test-tiny").model, max_seq_len=40, init_std=0.3)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(7)))
    return TrainedModel(Config(model=cfg, data=DataConfig(bos_first=True, seq_len=16)), ByteTokenizer(), graphdef,
                        params, 0, Path("in-memory"))


@pytest.fixture(scope="module")
def model():
    return fixture_m1_model()


@pytest.mark.parametrize("name,mode,cfg,original", CASES, ids=[c[0] for c in CASES])
def test_old_files_decode_to_the_same_bytes(model, name, mode, cfg, original):
    blob = (FIXTURES / f"{name}.pcomp").read_bytes()
    manifest = json.loads((FIXTURES / "manifest.json").read_text())[name]
    assert hashlib.sha256(original).hexdigest() == manifest["original_sha256"]
    header, _ = fileformat.unpack(blob)
    assert header["mode"] == mode and codec.config_of(header) == dataclasses.replace(cfg, **{
        k: header[k] for k in ("window_bits", "token_bits") if k in header})
    m1 = codec.m1_for(model, codec.config_of(header), mode, context=header["m1_context"])
    assert codec.decompress(m1, blob, name) == original


def _regenerate() -> None:
    model = fixture_m1_model()
    manifest = {}
    for name, mode, cfg, original in CASES:
        m1 = codec.m1_for(model, cfg, mode)
        blob = codec.compress(m1, original, cfg, mode=mode)
        assert codec.decompress(m1, blob) == original
        (FIXTURES / f"{name}.pcomp").write_bytes(blob)
        manifest[name] = {"mode": mode, "original_bytes": len(original), "file_bytes": len(blob),
                          "original_sha256": hashlib.sha256(original).hexdigest(),
                          "file_sha256": hashlib.sha256(blob).hexdigest()}
        print(name, len(original), "->", len(blob))
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_decode_fixtures.py --regenerate  (rewrites tests/fixtures/decode/)")
    _regenerate()
