"""A restricted unpickler for the refer toolkit's ``refs(<splitBy>).p`` files.

Those files are Python-2-era pickles of plain lists and dicts. ``pickle.load`` would run whatever a
crafted file asks for (``__reduce__`` → ``os.system``), so we admit only builtin containers and
scalars: any other global is refused before it is imported or called. The standard library offers
the hook (``Unpickler.find_class``) but no ready-made policy, hence this small module.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# Only what a list-of-dicts pickle can legitimately reference through a GLOBAL opcode. Calling any
# of these on untrusted arguments builds a value and has no side effect.
_ALLOWED = frozenset(
    {"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool"}
)
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than builtin containers or scalars; nothing was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only ``builtins.{list, dict, tuple, set, str, int, ...}``."""

    def __init__(self, file, *, source: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _BUILTIN_MODULES and name in _ALLOWED:
            return super().find_class("builtins", name)
        raise UnsafePickleError(
            f"{self._source}: refused to load global {module}.{name}: only builtin containers and scalars "
            f"are allowed in a refs pickle. The file is not a genuine refer annotation file (or is corrupt); "
            f"download it again from the official source."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}: not allowed in a refs pickle")


def _to_text(obj: Any) -> Any:
    """Python-2 ``str`` values arrive as bytes (we load with encoding='bytes'); decode them as UTF-8."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, list):
        return [_to_text(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_to_text(x) for x in obj)
    if isinstance(obj, dict):
        return {_to_text(k): _to_text(v) for k, v in obj.items()}
    return obj


def safe_loads(data: bytes, *, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` admitting only builtin containers/scalars; Python-2 byte strings become str.

    Raises `UnsafePickleError` (naming ``source`` and the refused global) for anything else.
    """
    # encoding="bytes" keeps py2 str as bytes so we can decode UTF-8 ourselves: latin-1 (the usual
    # advice) would turn non-ASCII sentences into mojibake.
    value = RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load()
    return _to_text(value)


def safe_load(path: Path | str) -> Any:
    """`safe_loads` on a file."""
    path = Path(path)
    return safe_loads(path.read_bytes(), source=str(path))
