"""Pins the restricted unpickler's allow-list: every admitted global, and every refused family, explicitly.

Pickles are written opcode by opcode (GLOBAL ``c``, MARK ``(``, TUPLE ``t``, REDUCE ``R``) so that each test names
exactly the global a crafted refs file would ask for; a refused global must raise before anything is imported or
called.
"""

from __future__ import annotations

import pickle
import sys

import pytest

from pipeline.sources.safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_load, safe_loads

ADMITTED = ["list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool"]


def _global(module: str, name: str) -> bytes:
    """A protocol-0 pickle whose value is the global ``module.name`` itself."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n."


def _call(module: str, name: str, arg: str) -> bytes:
    """A pickle that calls ``module.name(arg)`` while loading (what a malicious ``__reduce__`` writes)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(V" + arg.encode("raw_unicode_escape") + b"\ntR."


EMPTY = {"list": [], "dict": {}, "tuple": (), "set": set(), "frozenset": frozenset(), "str": "", "bytes": "",
         "bytearray": bytearray(), "int": 0, "float": 0.0, "complex": 0j, "bool": False}  # bytes() decodes to ""


@pytest.mark.parametrize("module", ["builtins", "__builtin__"])
@pytest.mark.parametrize("name", ADMITTED)
def test_every_builtin_container_and_scalar_is_admitted(module, name):
    """Each admitted global resolves to the builtin itself: called with no arguments it builds that type's empty value."""
    got = safe_loads(b"c" + module.encode() + b"\n" + name.encode() + b"\n(tR.")
    assert got == EMPTY[name] and type(got) is type(EMPTY[name])


def test_python2_refs_pickle_with_sets_and_byte_strings_loads_as_text():
    # What Python 2's pickle writes: STRING opcodes (bytes here) and sets as c__builtin__\nset.
    data = b"(l(dS'ref_id'\nI3\nsS'raw'\nS'caf\\xc3\\xa9'\nsS'tags'\nc__builtin__\nset\n((lI1\naI2\natRsa."
    assert pickle.loads(data, encoding="bytes") == [{b"ref_id": 3, b"raw": b"caf\xc3\xa9", b"tags": {1, 2}}]
    assert safe_loads(data) == [{"ref_id": 3, "raw": "caf\u00e9", "tags": {1, 2}}]
    # bytes that are not UTF-8 fall back to latin-1; tuples and nested dicts are decoded too
    latin = b"((S'\\xe9t\\xe9'\n(dS'k'\nS'v'\nstl."
    assert safe_loads(latin) == [("\u00e9t\u00e9", {"k": "v"})]


REFUSED = [
    # code execution and introspection in builtins (an `and` → `or` in the check admits all of these)
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"), ("builtins", "getattr"),
    ("builtins", "setattr"), ("builtins", "delattr"), ("builtins", "__import__"), ("builtins", "open"),
    ("builtins", "globals"), ("builtins", "vars"), ("builtins", "input"), ("builtins", "breakpoint"),
    ("builtins", "type"), ("builtins", "object"), ("builtins", "memoryview"), ("__builtin__", "eval"),
    ("__builtin__", "getattr"), ("__builtin__", "__import__"), ("__builtin__", "file"),
    # dotted names (protocol 4 resolves them attribute by attribute)
    ("builtins", "list.__class__"), ("builtins", "str.format"), ("builtins", "dict.fromkeys"),
    # process and OS access
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"), ("subprocess", "check_output"),
    ("pty", "spawn"), ("shutil", "rmtree"),
    # import machinery and indirection
    ("importlib", "import_module"), ("sys", "modules"), ("operator", "attrgetter"), ("operator", "methodcaller"),
    ("functools", "partial"), ("pickle", "loads"), ("copyreg", "_reconstructor"), ("codecs", "decode"),
    # containers from other modules and third-party reconstructors
    ("collections", "OrderedDict"), ("numpy.core.multiarray", "_reconstruct"), ("torch._utils", "_rebuild_tensor_v2"),
    # an allowed name under a non-builtin module
    ("os", "list"), ("smartedit_no_such_module", "dict"),
]


@pytest.mark.parametrize(("module", "name"), REFUSED)
def test_every_other_global_is_refused_naming_it(module, name):
    with pytest.raises(UnsafePickleError, match=rf"refused to load global {module}\.{name}"):
        safe_loads(_global(module, name), source="refs(unc).p")


def test_refused_call_never_runs_and_module_is_never_imported(tmp_path):
    marker = tmp_path / "pwned"
    payload = _call("builtins", "exec", f"open({str(marker)!r}, 'w').write('x')")
    with pytest.raises(UnsafePickleError):
        safe_loads(payload)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        safe_loads(_call("os", "system", f"touch {marker}"))
    assert not marker.exists()
    name = "smartedit_pin_never_imported"
    with pytest.raises(UnsafePickleError):
        safe_loads(_global(name, "x"))
    assert name not in sys.modules


def test_admitted_call_builds_the_value():
    assert safe_loads(_call("builtins", "int", "42")) == 42
    assert safe_loads(_call("__builtin__", "frozenset", "ab")) == frozenset("ab")


def test_persistent_ids_are_refused():
    data = b"Pabc\n."  # PERSID opcode
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_loads(data, source="x.p")
    # the stock unpickler would ask persistent_load too: ours refuses instead of returning anything
    import io

    with pytest.raises(UnsafePickleError):
        RestrictedUnpickler(io.BytesIO(data)).load()


def test_safe_load_names_the_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(_call("os", "system", "true"))
    with pytest.raises(UnsafePickleError) as err:
        safe_load(path)
    assert str(path) in str(err.value) and "os.system" in str(err.value)
    assert isinstance(err.value, pickle.UnpicklingError)
