"""The built-in demo corpus `builtin:python-docs`: real text from the running Python, offline.

Documents are the pydoc topics (the language reference pages behind `help('if')`) and the
documentation of the importable standard-library modules, rendered like `help()`: one
document per module docstring, per public function and per public class (with its
methods). The stdlib re-exports the same objects under several names (os.path.join is
posixpath.join) and near-copies its docs across sibling APIs, so the corpus has natural
exact and near duplicates. Ids are stable: `python-docs:<topic or qualified name>`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from lmforge.data.document import Doc

SOURCE = "python-docs"
# Modules whose import opens windows or browsers, prints, or is platform-specific noise.
SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "turtledemo",
        "turtle",
        "tkinter",
        "pydoc_data",
        "ensurepip",
        "lib2to3",
        "test",
        "xxlimited",
        "xxsubtype",
        "msilib",
        "winreg",
        "winsound",
        "msvcrt",
        "nt",
        "venv",
        "pip",
        "setuptools",
    }
)
MIN_DOC_CHARS = 40


def module_names() -> list[str]:
    """Top-level public stdlib modules and their public submodules, sorted."""
    names: set[str] = set()
    for name in sys.stdlib_module_names:
        if name.startswith("_") or name in SKIP_MODULES:
            continue
        names.add(name)
        module = _quiet_import(name)
        if module is None or not hasattr(module, "__path__"):
            continue
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{name}.", onerror=_ignore):
            parts = info.name.split(".")
            if any(p.startswith("_") or p.startswith("test") for p in parts[1:]):
                continue
            names.add(info.name)
    return sorted(names)


def _ignore(_: str) -> None:
    return None


def _quiet_import(name: str) -> ModuleType | None:
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:
        return None


def topic_docs() -> Iterator[Doc]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield _doc(f"topic:{name}", topics[name], kind="topic", module="")


def module_docs(names: list[str]) -> Iterator[Doc]:
    """Documents of the given modules, in order.

    Every listed stdlib module is imported first: importing a submodule can rebind a
    package attribute (curses.has_key), so the documents must not depend on which modules
    this process happened to import before.
    """
    modules = {name: _quiet_import(name) for name in module_names()}
    for name in names:
        module = modules.get(name) or _quiet_import(name)
        if module is not None:
            with warnings.catch_warnings():  # touching deprecated aliases (typing.re) warns
                warnings.simplefilter("ignore")
                docs = list(_docs_of(name, module))
            yield from docs


def _docs_of(name: str, module: ModuleType) -> Iterator[Doc]:
    doc = inspect.getdoc(module)
    if doc and len(doc) >= MIN_DOC_CHARS:
        yield _doc(name, f"Module {name}\n\n{doc}", kind="module", module=name)
    for attr in sorted(vars(module)):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _defined_in_stdlib(obj):
            continue
        text = _render_class(attr, obj) if inspect.isclass(obj) else _render_routine(attr, obj)
        if text and len(text) >= MIN_DOC_CHARS:
            kind = "class" if inspect.isclass(obj) else "function"
            yield _doc(f"{name}.{attr}", text, kind=kind, module=name)


def _defined_in_stdlib(obj: object) -> bool:
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    return top in sys.stdlib_module_names or top == "builtins"


class _Elided:
    def __repr__(self) -> str:
        return "..."


ELIDED = _Elided()


def _signature(obj: object) -> str:
    """The call signature with only literal defaults shown. Other defaults are values of
    this process (`environ=os.environ` would print every environment variable, secrets
    included, and their order), so they would make the corpus neither reproducible nor
    safe to train on: they render as `...`."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except Exception:
        return "(...)"
    params = [p if p.default is p.empty or _literal(p.default) else p.replace(default=ELIDED)
              for p in sig.parameters.values()]
    return str(sig.replace(parameters=params))


def _literal(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float | complex):
        return True
    if isinstance(value, str | bytes):  # not a path of this machine
        return len(value) <= 1 or not os.path.isabs(os.fsdecode(value))
    return False


def _render_routine(name: str, obj: object) -> str:
    doc = inspect.getdoc(obj)
    return f"{name}{_signature(obj)}\n    {_indent(doc)}" if doc else ""


def _render_class(name: str, cls: type) -> str:
    doc = inspect.getdoc(cls)
    parts = [f"class {name}{_signature(cls)}"] + ([f"    {_indent(doc)}"] if doc else [])
    for attr in sorted(vars(cls)):
        member = getattr(cls, attr, None)
        if attr.startswith("_") or not inspect.isroutine(member):
            continue
        member_doc = inspect.getdoc(member)
        if member_doc:
            parts.append(f"\n    {attr}{_signature(member)}\n        {_indent(member_doc, 8)}")
    return "\n".join(parts) if doc or len(parts) > 1 else ""


def _indent(text: str | None, width: int = 4) -> str:
    return (text or "").replace("\n", "\n" + " " * width)


def _doc(name: str, text: str, kind: str, module: str) -> Doc:
    return Doc(
        id=f"{SOURCE}:{name}",
        text=text,
        source=SOURCE,
        location=f"builtin:{SOURCE}/{name}",
        meta={"kind": kind, "module": module},
    )


def fingerprint() -> str:
    """What the corpus depends on: the Python build it is read from."""
    return f"python-{sys.version.split()[0]}-{sys.platform}"
