"""Validate samples against the declarative schemas in data_specs/schemas.yaml.

The YAML is the single source of truth; each kind becomes a pydantic model of its `json` member plus
a rule on which members must, and may, be present.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from data_specs import SPECS_DIR  # noqa: F401  (re-exported for modules that read other specs)
from pipeline.records import Sample
from pipeline.shards import SCHEMAS_FILE, schema_doc
_TYPES: dict[str, Any] = {
    "str": str,
    "bool": bool,
    "int": int,
    "float": float,
    "list[str]": list[str],
    "list[dict]": list[dict],
    "dict": dict,
}


class SchemaError(ValueError):
    """A sample does not match its kind's schema; the message names the key, the field and the rule."""


@dataclass(frozen=True)
class KindSchema:
    name: str
    model: type[BaseModel]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    image_extensions: tuple[str, ...]

    def _expand(self, member: str) -> tuple[str, ...]:
        """'image' → ('jpg', 'jpeg', ...); 'src.image' → ('src.jpg', ...); others unchanged."""
        head, _, last = member.rpartition(".")
        if last != "image":
            return (member,)
        prefix = f"{head}." if head else ""
        return tuple(prefix + ext for ext in self.image_extensions)

    def check_members(self, key: str, members: set[str]) -> None:
        allowed = {"json"}
        for member in self.required:
            options = self._expand(member)
            present = [m for m in options if m in members]
            if len(present) != 1:
                wanted = " or ".join(options)
                raise SchemaError(
                    f"sample {key!r} ({self.name}): needs exactly one of {wanted}, has {sorted(members)}"
                )
            allowed.update(options)
        for member in self.optional:
            allowed.update(self._expand(member))
        extra = members - allowed
        if extra:
            raise SchemaError(
                f"sample {key!r} ({self.name}): unexpected members {sorted(extra)}; "
                f"allowed: {sorted(allowed)} (add them to data_specs/schemas.yaml if intended)"
            )

    def check_meta(self, key: str, meta: dict[str, Any]) -> None:
        try:
            self.model.model_validate(meta)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise SchemaError(f"sample {key!r} ({self.name}): json field {loc!r}: {first['msg']}") from None


def _field_spec(spec: Any) -> tuple[Any, Any]:
    if isinstance(spec, str):
        return (_TYPES[spec], ...)
    typ = _TYPES[spec["type"]]
    return (typ | None, None) if spec.get("optional") else (typ, ...)


@functools.cache
def load_schemas(path: Path = SCHEMAS_FILE) -> dict[str, KindSchema]:
    """Parse data_specs/schemas.yaml into one `KindSchema` per kind."""
    import yaml

    doc = schema_doc() if path == SCHEMAS_FILE else yaml.safe_load(path.read_text())
    common = {name: _field_spec(spec) for name, spec in doc["common_fields"].items()}
    exts = tuple(doc["image_extensions"])
    schemas = {}
    for kind, spec in doc["kinds"].items():
        fields = dict(common)
        fields.update({name: _field_spec(s) for name, s in (spec.get("fields") or {}).items()})
        model = create_model(
            f"{kind.title().replace('_', '')}Meta", __config__=ConfigDict(extra="allow", strict=True), **fields
        )
        members = spec.get("members") or {}
        schemas[kind] = KindSchema(
            kind, model, tuple(members.get("required", ())), tuple(members.get("optional", ())), exts
        )
    return schemas


def validate_sample(sample: Sample) -> None:
    """Raise `SchemaError` unless the sample's key, kind, json fields and members match its schema."""
    key = sample.key
    if not key or "." in key or "/" in key:
        raise SchemaError(f"sample key {key!r}: keys must be non-empty with no '.' or '/' (use pipeline.records.make_key)")
    schemas = load_schemas()
    kind = sample.meta.get("kind")
    if kind not in schemas:
        raise SchemaError(f"sample {key!r}: json field 'kind' is {kind!r}; expected one of {sorted(schemas)}")
    schema = schemas[kind]
    schema.check_meta(key, sample.meta)
    schema.check_members(key, set(sample.files))
