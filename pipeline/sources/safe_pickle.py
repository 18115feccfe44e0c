"""A restricted, bounded unpickler for the refer toolkit's ``refs(<splitBy>).p`` files.

Those files are Python-2-era pickles of plain lists and dicts. ``pickle.load`` would run whatever a
crafted file asks for (``__reduce__`` → ``os.system``), so we admit only builtin containers and
scalars: any other global is refused before it is imported or called. The standard library offers
the hook (``Unpickler.find_class``) but no ready-made policy, hence this small module.

Admitting only builtins is not enough to bound memory: ``bytes(10**9)`` is a builtin call a 31-byte
file can make, and a list holding the same list four times, nested, is a few hundred bytes that
expand 4x per level once copied. So the admitted callables are wrapped to refuse large sizes, and
the loaded value is measured (shared references counted as often as they occur, as the later copy
will) against limits on total objects and nesting depth before anything walks it.
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


# A real refs(unc).p (RefCOCO, 50k refs) expands to about 4 million objects, 6 levels deep.
MAX_OBJECTS = 50_000_000
MAX_DEPTH = 100
MAX_ALLOCATION = 64 * 1024 * 1024  # bytes/str/containers any single admitted call may build


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than builtin containers or scalars, or for too much; nothing ran."""


def _bounded(cls: type, source: str) -> Any:
    """``cls`` as a callable that refuses to build anything larger than `MAX_ALLOCATION`."""

    def build(*args: Any) -> Any:
        for arg in args:
            size = arg if isinstance(arg, int) and not isinstance(arg, bool) else len(arg) if hasattr(arg, "__len__") else 0
            if isinstance(arg, int) and cls in (bytes, bytearray) and size > MAX_ALLOCATION:
                raise UnsafePickleError(f"{source}: refused {cls.__name__}({size}): allocation over {MAX_ALLOCATION} bytes; "
                                        "not a genuine refs pickle")
            if size > MAX_ALLOCATION:
                raise UnsafePickleError(f"{source}: refused {cls.__name__} of {size} items: over {MAX_ALLOCATION}")
        return cls(*args)

    return build


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only ``builtins.{list, dict, tuple, set, str, int, ...}``."""

    def __init__(self, file, *, source: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _BUILTIN_MODULES and name in _ALLOWED:
            return _bounded(super().find_class("builtins", name), self._source)
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


def check_size(value: Any, source: str, *, max_objects: int = MAX_OBJECTS, max_depth: int = MAX_DEPTH) -> int:
    """Objects in ``value`` counting each occurrence of a shared reference (what a copy would build).

    Memoised per object id, so the measure itself is linear in the *distinct* objects of the pickle;
    raises `UnsafePickleError` naming ``source`` above ``max_objects`` or ``max_depth``.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def measure(obj: Any, depth: int) -> int:
        if depth > max_depth:
            raise UnsafePickleError(f"{source}: containers nested deeper than {max_depth}; not a genuine refs pickle")
        if not isinstance(obj, (list, tuple, dict, set, frozenset)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise UnsafePickleError(f"{source}: a container contains itself; not a genuine refs pickle")
        active.add(key)
        items = [x for kv in obj.items() for x in kv] if isinstance(obj, dict) else obj
        total = 1
        for item in items:
            total += measure(item, depth + 1)
            if total > max_objects:
                raise UnsafePickleError(f"{source}: expands to more than {max_objects} objects (shared references "
                                        "copied); not a genuine refs pickle")
        active.discard(key)
        sizes[key] = total
        return total

    return measure(value, 0)


def safe_loads(data: bytes, *, source: str = "<pickle>", max_objects: int = MAX_OBJECTS,
               max_depth: int = MAX_DEPTH) -> Any:
    """Unpickle ``data`` admitting only builtin containers/scalars, bounded; Python-2 byte strings become str.

    Raises `UnsafePickleError` (naming ``source`` and the refused global or limit) for anything else.
    """
    # encoding="bytes" keeps py2 str as bytes so we can decode UTF-8 ourselves: latin-1 (the usual
    # advice) would turn non-ASCII sentences into mojibake.
    try:
        value = RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            MemoryError, RecursionError) as err:
        raise UnsafePickleError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from None
    check_size(value, source, max_objects=max_objects, max_depth=max_depth)
    return _to_text(value)


def safe_load(path: Path | str) -> Any:
    """`safe_loads` on a file."""
    path = Path(path)
    return safe_loads(path.read_bytes(), source=str(path))
