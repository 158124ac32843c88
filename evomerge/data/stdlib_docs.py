"""The technical domain's text: the Python standard library's own docstrings.

Run as a script in a fresh interpreter (``python -I -S stdlib_docs.py``, see
``sources.stdlib_docstrings``) so only the standard library is loaded and no
library has monkeypatched it; prints ``{"documents": [[module, text], ...],
"skipped": [...]}`` as JSON. Standard library only: it must not import evomerge.

Only objects defined in each module, under their own name, with their own (not
inherited) docstrings are used, so ``object``'s docs are not repeated hundreds
of times. Signatures keep simple default values only: a default such as
``sys.executable`` would put a machine's paths into the text.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings

#: Standard-library modules whose docstrings form the technical domain. Fixed and
#: sorted so the text depends only on the Python version; modules missing on a
#: platform or version (``tomllib`` < 3.11) are skipped and the skip is recorded.
_MODULE_NAMES = """
    abc argparse array ast asyncio.base_events asyncio.events asyncio.futures
    asyncio.locks asyncio.protocols asyncio.queues asyncio.streams asyncio.subprocess
    asyncio.tasks asyncio.transports base64 binascii bisect builtins bz2 cProfile
    calendar cmd code codecs codeop collections collections.abc colorsys compileall
    concurrent.futures concurrent.futures.process concurrent.futures.thread configparser
    contextlib contextvars copy copyreg csv ctypes dataclasses datetime dbm decimal
    difflib dis doctest email.charset email.contentmanager email.feedparser
    email.generator email.header email.headerregistry email.message email.parser
    email.policy email.utils enum filecmp fileinput fnmatch fractions ftplib functools
    getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser http.client
    http.cookiejar http.cookies http.server imaplib importlib importlib.abc
    importlib.machinery importlib.metadata importlib.resources importlib.util inspect io
    ipaddress itertools json json.decoder json.encoder keyword linecache locale logging
    logging.config logging.handlers lzma mailbox math mimetypes mmap modulefinder
    multiprocessing.connection multiprocessing.managers multiprocessing.pool
    multiprocessing.queues multiprocessing.synchronize netrc ntpath numbers operator
    optparse os pathlib pdb pickle pickletools platform plistlib poplib posixpath pprint
    profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter
    runpy sched secrets selectors shlex shutil signal smtplib socket socketserver
    sqlite3 ssl stat statistics string stringprep struct subprocess symtable sys
    sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize
    tomllib trace traceback tracemalloc types typing unicodedata unittest.case
    unittest.loader unittest.mock unittest.result unittest.runner unittest.suite
    urllib.error urllib.parse urllib.request urllib.robotparser uuid warnings weakref
    wave wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util
    wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree
    xml.sax.handler xml.sax.saxutils xml.sax.xmlreader xmlrpc.client xmlrpc.server
    zipfile zipimport zlib zoneinfo
"""
STDLIB_MODULES: tuple[str, ...] = tuple(sorted(_MODULE_NAMES.split()))


def stdlib_docstrings() -> tuple[list[tuple[str, str]], list[str]]:
    """One document per module of :data:`STDLIB_MODULES`: ``name(signature)`` + docstring blocks.

    Returns (documents, modules skipped because they do not import here).
    """
    docs: list[tuple[str, str]] = []
    skipped: list[str] = []
    for modname in STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - platform-specific modules are optional
            skipped.append(modname)
            continue
        parts = []
        own = _own_doc(module)
        if own:
            parts.append(f"Module {modname}\n\n{own}")
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not _defined_in(obj, modname) or obj.__name__ != name:
                continue  # private, imported from elsewhere, or an alias (array.ArrayType)
            own = _own_doc(obj)
            if own:
                parts.append(
                    f"{modname}.{name}{'' if inspect.isclass(obj) else _signature(obj)}\n\n{own}"
                )
            if inspect.isclass(obj):
                parts += _method_docs(f"{modname}.{name}", obj)
        docs.append((modname, "\n\n".join(parts)))
    return docs, skipped


def _defined_in(obj: object, modname: str) -> bool:
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return False
    owner = getattr(obj, "__module__", None) or ""
    return owner == modname or owner.lstrip("_") == modname  # C accelerators: _heapq -> heapq


def _method_docs(prefix: str, cls: type) -> list[str]:
    parts = []
    for name, attr in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        func = func.fget if isinstance(func, property) else func
        if func is None or not (inspect.isroutine(func) or isinstance(attr, property)):
            continue
        own = _own_doc(func)
        if own:
            parts.append(f"{prefix}.{name}{_signature(func)}\n\n{own}")
    return parts


def _own_doc(obj: object) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _signature(obj: object) -> str:
    text = getattr(obj, "__text_signature__", None)
    if isinstance(text, str):  # C function: its own text; inspect.signature would parse it (slow)
        return _BOUND_MODULE.sub("", text).replace("$", "")
    if not inspect.isfunction(obj):
        return ""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    params = [
        p.replace(default=_Elided()) if _machine_specific(p.default) else p
        for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params))


class _Elided:
    def __repr__(self) -> str:
        return "..."


def _machine_specific(default: object) -> bool:
    """Whether a default value's repr may differ between machines or runs."""
    if (
        default is inspect.Parameter.empty
        or default is None
        or isinstance(default, (bool, int, float))
    ):
        return False
    return not (
        isinstance(default, str)
        and len(default) <= 40
        and "/" not in default
        and "\\" not in default
    )


_BOUND_MODULE = re.compile(r"\$module(, )?")


if __name__ == "__main__":
    documents, skipped = stdlib_docstrings()
    sys.stdout.write(json.dumps({"documents": documents, "skipped": skipped}))
