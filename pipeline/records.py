"""The two things a pipeline stage yields: a `Sample` to keep or a `Reject` to quarantine.

Every stage is a plain generator over these. A stage never drops input silently: whatever it
cannot use becomes a `Reject` with a reason (a short snake_case code that becomes a counter in the
manifest) and the source location, so that counts in = kept + rejected always holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Sample:
    """One webdataset sample.

    key: the sample key: no dots (webdataset splits member names at the first dot), unique in its dataset.
    meta: becomes the `json` member; holds at least kind, source, split, source_id (data_specs/schemas.yaml).
    files: member extension → bytes, e.g. {"jpg": ..., "mask.png": ...}; stored as given, never re-encoded.
    """

    key: str
    meta: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))


@dataclass(frozen=True)
class Reject:
    """A record that could not be used.

    location: where it came from, precise enough to find it (file path, file + record index, ref_id, ...).
    reason: snake_case reason code, counted in the manifest (e.g. "image_missing", "eval_overlap").
    detail: a human sentence: what was wrong and how to fix it.
    """

    location: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"location": self.location, "reason": self.reason, "detail": self.detail}


def make_key(*parts: object) -> str:
    """A webdataset-safe key from parts: unsafe characters (dots, spaces, slashes) become '_', parts joined by '-'.

    Uniqueness is the caller's job: include something unique (a record index) among the parts.
    """
    cleaned = [_KEY_UNSAFE.sub("_", str(p)).strip("_") or "_" for p in parts]
    return "-".join(cleaned)
