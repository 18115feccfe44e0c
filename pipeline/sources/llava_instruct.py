"""LLaVA-Instruct-150k (kind ``vqa``): one sample per record, keyed by record index.

Layout: ``<root>/llava_instruct_150k.json`` = [{id, image, conversations: [{from, value}]}]; images
are COCO train2017 JPEGs (``images`` option). Ids and images repeat across records, so the record
index is what makes a key unique. Conversations are kept as they are, except that ``<image>`` is
moved to the front of the first human turn ("<image>\\n" + the rest), where the source has it
leading or trailing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.records import Sample
from pipeline.sources.base import BaseReader, SourceError, load_json_file
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, read_image

IMAGE_TOKEN = "<image>"
DEFAULT_FILE = "llava_instruct_150k.json"


def normalise_conversations(conversations: Any, where: str) -> list[dict[str, str]]:
    """Validate the turns and put ``<image>`` at the front of the first human turn; other turns unchanged."""
    if not isinstance(conversations, list) or not conversations:
        raise RejectError("empty_text", f"{where}: field 'conversations' is empty or not a list")
    turns: list[dict[str, str]] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt"):
            raise RejectError("annotation_invalid", f"{where}: conversations[{i}] needs 'from' human|gpt, got {turn!r:.80}")
        value = turn.get("value")
        if not isinstance(value, str) or not value.replace(IMAGE_TOKEN, "").strip():
            raise RejectError("empty_text", f"{where}: conversations[{i}].value is empty")
        turns.append(dict(turn))
    first = next((t for t in turns if t["from"] == "human"), None)
    if first is None:
        raise RejectError("annotation_invalid", f"{where}: no human turn")
    first["value"] = f"{IMAGE_TOKEN}\n" + first["value"].replace(IMAGE_TOKEN, "").strip()
    return turns


class LlavaInstructReader(BaseReader):
    """Single split ``train``.

    images: COCO train2017 directory (default ``<root>/../coco/train2017``, else ``<root>/train2017``).
    annotation: the json file name under root (default llava_instruct_150k.json).
    """

    source = "llava-instruct"

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        *,
        images: Path | str | None = None,
        annotation: str = DEFAULT_FILE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)
        self.annotation = annotation
        if images:
            self.images = Path(images).resolve()
        else:
            candidates = [self.root.parent / "coco" / "train2017", self.root / "train2017", self.root / "coco" / "train2017"]
            self.images = next((c for c in candidates if c.is_dir()), candidates[0]).resolve()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "images": str(self.images), "annotation": self.annotation}

    @property
    def annotation_path(self) -> Path:
        return self.root / self.annotation

    def _list_records(self) -> list[Any]:
        path = self.annotation_path
        if not path.exists():
            raise SourceError(f"{path}: missing; expected LLaVA's {DEFAULT_FILE} under --root")
        records = load_json_file(path, f"LLaVA's {DEFAULT_FILE}, a JSON list of records")
        if not isinstance(records, list):
            raise SourceError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        return records

    def location(self, index: int, record: Any) -> str:
        rid = record.get("id") if isinstance(record, dict) else None
        return f"{self.annotation_path}#{index} (id={rid})"

    def _read(self, index: int, record: Any) -> Sample:
        where = f"{self.annotation_path.name}[{index}]"
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise RejectError("annotation_invalid", f"{where}: record needs a non-empty 'image' file name")
        conversations = normalise_conversations(record.get("conversations"), where)
        image = read_image(self.images, record["image"], max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        meta = self.meta(
            "vqa", index, record_id=str(record.get("id", "")), image_file=record["image"],
            conversations=conversations, **self.image_fields(image),
        )
        return Sample(self.key(index, record.get("id", "")), meta, {image.ext: image.data})

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        return ["train"]
