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
import warnings

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
    """
    from pydoc_data.topics import topics

    docs: list[bytes] = [topics[key].encode("utf-8") for key in sorted(topics)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. typing.io / typing.re deprecation on access
        for module_name in _MODULE_NAMES:
            text = _module_document(module_name)
            if text.strip():
                docs.append(text.encode("utf-8"))
    return tuple(docs)
