"""Cheap fingerprints of input trees, so that scheduled retraining can tell "nothing new" without converting."""

from __future__ import annotations

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
