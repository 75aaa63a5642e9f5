"""The embedded default corpus: English text that ships with every CPython 3.11+.

Lets demos and tests train on real prose with no download: the pydoc topic pages
(`pydoc_data.topics`, the language reference sections `help()` shows) plus the
docstrings of a fixed list of pure-Python standard-library modules. The text is
deterministic for a given Python version (it changes between CPython releases).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

# Fixed, ordered list. Chosen to be pure Python, free of import side effects, and
# platform independent: no modules whose public names depend on the OS or on
# optional C extensions (ssl, lzma, ...), no deprecated modules that warn on import.
_MODULE_NAMES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bdb", "calendar", "cmd", "codecs",
    "collections", "collections.abc", "configparser", "contextlib", "csv",
    "dataclasses", "difflib", "dis", "email.message", "email.utils", "enum",
    "fileinput", "fractions", "functools", "getopt", "graphlib", "heapq",
    "http.cookiejar", "http.server", "inspect", "ipaddress", "json", "logging",
    "logging.handlers", "mailbox", "mimetypes", "optparse", "pathlib", "pdb",
    "pickletools", "plistlib", "pydoc", "queue", "random", "re", "sched",
    "statistics", "tarfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "typing", "unittest.case", "unittest.mock", "urllib.parse",
    "uuid", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile",
)


def _own_doc(obj) -> str | None:
    """The object's own docstring, cleaned; None if absent or not reproducible."""
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    doc = inspect.cleandoc(doc)
    if " at 0x" in doc:  # a repr with a memory address: differs between runs
        return None
    return doc


def _module_document(module_name: str) -> str:
    """Module docstring + docstrings of its public classes, functions and methods."""
    module = importlib.import_module(module_name)
    sections: list[str] = []
    doc = _own_doc(module)
    if doc:
        sections.append(f"Module {module_name}\n\n{doc}")
    namespace = vars(module)
    for name in sorted(namespace):
        obj = namespace[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue  # private, or re-exported from elsewhere
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = _own_doc(obj)
        if doc:
            sections.append(f"{module_name}.{name}\n\n{doc}")
        if not inspect.isclass(obj):
            continue
        for attr_name, attr in sorted(vars(obj).items()):
            if attr_name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if not (inspect.isfunction(attr) or isinstance(attr, property)):
                continue
            doc = _own_doc(attr)
            if doc:
                sections.append(f"{module_name}.{name}.{attr_name}\n\n{doc}")
    return "\n\n".join(sections) + "\n"


@functools.lru_cache(maxsize=1)
def embedded_documents() -> tuple[bytes, ...]:
    """All embedded documents as UTF-8 bytes, in a fixed order (~1 MB in total).

    One document per pydoc topic (sorted by key), then one per module in
    `_MODULE_NAMES`. Under `python -OO` docstrings are stripped, so only the
    topics remain.

    Read in a fresh interpreter without site-packages (`python -S`): libraries
    patch the standard library when imported (transformers adds
    `logging.Logger.warning_advice`, torch wraps `inspect.getfile`), so reading
    the live modules of this process would make the corpus depend on what was
    imported before.
    """
    package_root = Path(__file__).resolve().parents[2]
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from pcomp.data.embedded import read_documents; "
            "sys.stdout.write(json.dumps(read_documents()))")
    flags = ["-OO"] if sys.flags.optimize >= 2 else []
    out = subprocess.run([sys.executable, "-S", *flags, "-c", code, str(package_root)], capture_output=True,
                         check=True, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    return tuple(doc.encode("utf-8") for doc in json.loads(out.stdout))


def read_documents() -> list[str]:
    """The documents from this interpreter's live modules (see `embedded_documents`)."""
    from pydoc_data.topics import topics

    docs: list[str] = [topics[key] for key in sorted(topics)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. typing.io / typing.re deprecation on access
        for module_name in _MODULE_NAMES:
            text = _module_document(module_name)
            if text.strip():
                docs.append(text)
    return docs
