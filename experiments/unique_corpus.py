"""The unique-data corpus of the patch-scaling study and the reference M1: real English large enough
that no token is read twice (Debian's linux-doc-6.1 and python3.11-doc reStructuredText sources, ~35 MB),
as one JSONL file of whole documents, train documents first, held-out documents (~5%, chosen by a hash of
the document's name) last, with the `data.eval_fraction` that cuts exactly between them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from experiments.harness import write_json
from pcomp.data.sources import split_documents
from pcomp.errors import DataError

INSTALL_HINT = "as root: apt-get update && apt-get install -y linux-doc-6.1 python3.11-doc"
DOC_ROOTS = (  # (package, directory of its reStructuredText sources)
    ("linux-doc-6.1", "/usr/share/doc/linux-doc-6.1/html/_sources"),
    ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources"),
)
EVAL_PERMILLE = 50  # documents whose name hashes below this (of 1000) are held out: ~5% of the documents


def name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def is_held_out(name: str, permille: int = EVAL_PERMILLE) -> bool:
    """Deterministic document-level split: by the SHA-256 of the document's name."""
    return name_hash(name) % 1000 < permille


def read_doc_tree(roots: Sequence[tuple[str, str]] = DOC_ROOTS) -> list[tuple[str, str]]:
    """[(package/relative/path, text)] of every *.txt file below each root, sorted by name."""
    missing = [pkg for pkg, root in roots if not os.path.isdir(root)]
    if missing:
        raise DataError(f"the unique-data corpus needs the Debian packages {', '.join(missing)}; {INSTALL_HINT}")
    docs = []
    for pkg, root in roots:
        for path in sorted(Path(root).rglob("*.txt")):
            text = path.read_bytes().decode("utf-8", errors="replace")
            if text.strip():
                docs.append((f"{pkg}/{path.relative_to(root).as_posix()}", text if text.endswith("\n") else text + "\n"))
    return sorted(docs)


def corpus_split(docs: Sequence[tuple[str, str]], permille: int = EVAL_PERMILLE
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) whole documents: train in the given order, held-out in the order of their
    name hashes (a fixed shuffle, so the first ones - all that `data.eval_max_bytes` keeps - mix
    both packages)."""
    train = [d for d in docs if not is_held_out(d[0], permille)]
    held = sorted((d for d in docs if is_held_out(d[0], permille)), key=lambda d: name_hash(d[0]))
    return train, held


def write_corpus(docs: Sequence[tuple[str, str]], path: Path, permille: int = EVAL_PERMILLE) -> dict:
    """Write train documents then held-out documents as JSONL, and the `data.eval_fraction` that makes
    `pcomp.data.sources.split_documents` cut exactly between them (checked). Returns the corpus meta."""
    train, held = corpus_split(docs, permille)
    if not train or not held:
        raise DataError(f"corpus split left {len(train)} train and {len(held)} held-out documents")
    train_b = [t.encode() for _, t in train]
    held_b = [t.encode() for _, t in held]
    total = sum(map(len, train_b)) + sum(map(len, held_b))
    fraction = sum(map(len, held_b)) / total
    got_train, got_held = split_documents(tuple(train_b + held_b), fraction)
    if list(got_train) != train_b or list(got_held) != held_b:
        raise DataError(f"eval_fraction {fraction!r} does not split {path} at the document boundary")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name, text in train + held:
            f.write(json.dumps({"name": name, "text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    meta = {"path": str(path), "eval_fraction": fraction, "train_docs": len(train), "eval_docs": len(held),
            "train_bytes": sum(map(len, train_b)), "eval_bytes": sum(map(len, held_b)),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "packages": [p for p, _ in DOC_ROOTS],
            "eval_permille": permille}
    write_json(path.with_suffix(".meta.json"), meta)
    return meta


def ensure_corpus(path: Path) -> dict:
    """The corpus meta, building the corpus first when it is not there."""
    meta_path = path.with_suffix(".meta.json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    print(f"building the unique-data corpus {path} from {', '.join(p for p, _ in DOC_ROOTS)} ...", flush=True)
    meta = write_corpus(read_doc_tree(), path)
    print(f"  {meta['train_docs']} train docs ({meta['train_bytes'] / 1e6:.1f} MB), {meta['eval_docs']} held-out "
          f"docs ({meta['eval_bytes'] / 1e6:.2f} MB)", flush=True)
    return meta
