"""Nothing lost, nothing silent, round two (issue #20), output side: `pcomp.output.Output` is how every
command writes a file. A device node or FIFO given as the output is written in place, never renamed
over; the output is claimed (directory writable, no other pcomp writing it) before the work is done."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from pcomp.cli import main
from pcomp.errors import DataError
from pcomp.output import Output, check_replaceable, write_file

M1_BATCH = "16"
TEXT = b"Nothing lost, nothing silent. " * 20


def _lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("compress:", "decompress:"))]


def _one_error_line(capsys, *needles) -> str:
    lines = _lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("pcomp: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_compressed(m1_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    src, comp = d / "in.txt", d / "in.pcomp"
    src.write_bytes(TEXT)
    assert main(["compress", "--m1", str(m1_run), "--batch", M1_BATCH, "--no-compare", str(src), str(comp)]) == 0
    return src, comp


def _read_fifo(path: Path, got: list) -> threading.Thread:
    def reader():
        with open(path, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_force_into_a_fifo_writes_through_it_and_keeps_it(m1_run, small_compressed, tmp_path, capsys, command):
    src, comp = small_compressed
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    inp = src if command == "compress" else comp
    argv = [command, "--m1", str(m1_run), "--force", str(inp), str(fifo)]
    if command == "compress":
        argv[3:3] = ["--batch", M1_BATCH, "--no-compare"]
    got = []
    reader = _read_fifo(fifo, got)
    assert main(argv) == 0, capsys.readouterr().err
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    expected = TEXT if command == "decompress" else comp.read_bytes()
    assert got == [expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary or lock file left


def test_fifo_output_without_force_is_refused(m1_run, small_compressed, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["decompress", "--m1", str(m1_run), str(small_compressed[1]), str(fifo)]) == 2
    _one_error_line(capsys, str(fifo), "FIFO", "--force")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def _mknod_or_skip(path: Path, major: int, minor: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        with open(path, "wb"):
            pass
    except OSError as e:  # a file system mounted nodev, or no permission in a container
        pytest.skip(f"cannot create or open a device node here: {e}")


def test_force_into_a_full_device_is_one_line_and_keeps_the_node(m1_run, small_compressed, tmp_path, capsys):
    """A copy of /dev/full (char 1:7) made in tmp_path: the write fails with ENOSPC, one line, and the
    node is still a device (it used to be renamed over by a 600-byte regular file, exit 0)."""
    full = tmp_path / "full"
    _mknod_or_skip(full, 1, 7)
    assert main(["decompress", "--m1", str(m1_run), "--force", str(small_compressed[1]), str(full)]) == 2
    _one_error_line(capsys, str(full), "No space left on device")
    assert stat.S_ISCHR(os.stat(full).st_mode) and os.stat(full).st_rdev == os.makedev(1, 7)
    null = tmp_path / "null"
    _mknod_or_skip(null, 1, 3)
    assert main(["decompress", "--m1", str(m1_run), "--force", str(small_compressed[1]), str(null)]) == 0
    assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "null"]


def _mount_readonly_or_skip(path: Path):
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", str(path)], check=True)


def test_decompress_into_a_read_only_directory_fails_before_decoding(m1_run, small_compressed, tmp_path, capsys,
                                                                     monkeypatch):
    import pcomp.compress.codec as codec

    ro = tmp_path / "ro"
    undo = _mount_readonly_or_skip(ro)
    try:
        def must_not_decode(*a, **k):
            raise AssertionError("decoded before checking that the output can be written")

        monkeypatch.setattr(codec, "decompress", must_not_decode)
        assert main(["decompress", "--m1", str(m1_run), str(small_compressed[1]), str(ro / "out.txt")]) == 2
        _one_error_line(capsys, str(ro / "out.txt"))
        assert not (ro / "out.txt").exists()
    finally:
        undo()


def test_second_writer_of_the_same_output_fails_at_its_start(m1_run, small_compressed, tmp_path, capsys,
                                                             monkeypatch):
    """Another pcomp holds the output's claim (taken here as `pcomp compress` takes it): a second compress
    to it fails before compressing anything; once released, the output is written."""
    import pcomp.compress.codec as codec

    out = tmp_path / "out.pcomp"
    real = codec.compress
    calls = []
    monkeypatch.setattr(codec, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))
    argv = ["compress", "--m1", str(m1_run), "--batch", M1_BATCH, "--no-compare", str(small_compressed[0]), str(out)]
    with Output(out, force=False):
        assert main(argv) == 2
        _one_error_line(capsys, str(out), "being written by another pcomp process", f"pid {os.getpid()}")
        assert calls == [] and not out.exists()
    assert main(argv) == 0 and calls == [1]
    assert out.read_bytes() == small_compressed[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcomp"]


def test_compressing_an_empty_file_reports_no_bits_per_byte(m1_run, tmp_path, capsys):
    src, out = tmp_path / "empty", tmp_path / "empty.pcomp"
    src.write_bytes(b"")
    assert main(["compress", "--m1", str(m1_run), "--batch", M1_BATCH, "--no-compare", str(src), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{src}: 0 -> {out.stat().st_size} bytes (empty input: no bits/byte); "), line
    assert "bits/byte)" not in line.replace("no bits/byte)", "")


# ----------------------------------------------------------------------------- the helper itself
def test_output_helper(tmp_path):
    path = tmp_path / "f"
    write_file(path, b"one")
    write_file(path, b"two")  # force by default: replaced whole
    assert path.read_bytes() == b"two"
    with pytest.raises(DataError, match="already exists; pass --force"):
        write_file(path, b"three", force=False)
    with pytest.raises(DataError, match="is a directory; expected a file name"):
        write_file(tmp_path, b"x")
    with pytest.raises(DataError, match="does not exist"):
        write_file(tmp_path / "no" / "f", b"x")
    with Output(tmp_path / "g", force=False):  # released without writing: nothing left
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO, not a file pcomp wrote"):
        check_replaceable(fifo)
    check_replaceable(path)
    check_replaceable(tmp_path / "new")


def test_generate_prints_each_token_as_it_is_sampled(m1_run, capsys, monkeypatch):
    """`pcomp generate` of a byte-level model writes the text as tokens are sampled (a Ctrl-C keeps what was
    printed), and the whole output is byte for byte what decoding all tokens at the end gives."""
    import pcomp.compress.generate as gen  # the generation loop, which calls the sampler by this name
    from pcomp.train.load import load_trained

    real, seen = gen.generate, []

    def watching(*args, on_token=None, **kw):
        def on(token):
            stop = on_token(token) if on_token is not None else None
            seen.append((token, capsys.readouterr().out))  # what reached stdout right after this token
            return stop

        return real(*args, on_token=on, **kw)

    monkeypatch.setattr(gen, "generate", watching)
    prompt = "Grüße, "
    assert main(["generate", "--checkpoint", str(m1_run), "--prompt", prompt, "--max-tokens", "40", "--seed", "3"]) == 0
    rest = capsys.readouterr().out
    run = load_trained(m1_run)
    tok = run.tokenizer
    ids = [tok.bos_id, *tok.encode(prompt.encode())]
    expected = real(run.graphdef, run.params, ids, max_new_tokens=40, max_len=run.cfg.model.max_seq_len,
                    temperature=0.8, top_k=40, seed=3, stop_id=tok.eos_id, bos_id=tok.bos_id)
    assert [t for t, _ in seen] == list(expected)
    streamed = "".join(out for _, out in seen)
    assert streamed + rest == (prompt.encode() + tok.decode(expected)).decode("utf-8", errors="replace") + "\n"
    assert seen[0][1].startswith(prompt)  # the prompt and the first token were out before the second was sampled
    assert sum(1 for _, out in seen if out) >= len(seen) // 2  # text arrived token by token, not at the end


def test_export_hf_never_replaces_a_fifo(m1_run, tmp_path, capsys):
    pytest.importorskip("transformers")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["export-hf", "--checkpoint", str(m1_run), str(fifo)]) == 2
    _one_error_line(capsys, str(fifo), "is not a directory")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
