"""Cheap fingerprints of input trees, so that scheduled retraining can tell "nothing new" without converting."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def tree_fingerprint(root: Path | str) -> str:
    """sha256 over every file's relative path, size and mtime below ``root`` (a file: itself).

    Reads no file contents (a stat per file), so it costs seconds on a real dataset; a changed, added
    or removed file changes it. Symlinks are followed, hidden directories skipped.
    """
    root = Path(root)
    h = hashlib.sha256()
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input root does not exist")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            st = path.stat()
            entries.append(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n")
    for entry in sorted(entries):
        h.update(entry.encode())
    return h.hexdigest()


_CODE_MODULES = ("pipeline.writer", "pipeline.convert", "pipeline.records", "pipeline.schema",
                 "pipeline.sources.base", "pipeline.sources.images")


@functools.cache
def code_fingerprint(reader_module: str) -> str:
    """sha256 of the source text of a reader's module and of the modules every shard passes through.

    Part of each shard's fingerprint: a shard written by other reader or writer code is rebuilt (or the
    rerun refused) instead of being reused. Source text, not the git commit, so unrelated commits keep
    finished shards valid.
    """
    import importlib
    import inspect

    from data_specs import spec_path

    h = hashlib.sha256()
    for name in (reader_module, *_CODE_MODULES):
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (TypeError, OSError):  # no source file (a reader defined in __main__ or a frozen module)
            source = ""
        h.update(name.encode() + b"\0" + source.encode() + b"\0")
    h.update(spec_path("schemas.yaml").read_bytes())
    return h.hexdigest()
