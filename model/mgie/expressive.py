"""Expressive instructions (MGIE §3.1; apple/ml-mgie ``process_data.ipynb``): a data step over edit-pair shards.

For every edit sample a frozen LLaVA answers "what will this image be like if '<instruction>'  (in a short
paragraph)" greedily; the answer is cut at "alternative", at [IMG0] and after two sentences (the official
``remove_alter``), then a local seq2seq summariser (Flan-T5 by directory; beams 5, min 5 / max 64 tokens,
no-repeat-ngram 3) shortens it to ≤ 32 words. Both models are swappable: anything with ``describe`` /
``__call__`` of the same shape works (tests use tiny random LLaVA and T5).

Output: a sidecar beside nothing else, keyed by sample key: ``OUT/<dataset>/<shard>.expressive.jsonl`` lines
``{"key", "instruction", "description", "expressive"}`` written atomically, then ``<shard>.expressive.stats.json``
(counts in = kept + rejected by reason) as the completion marker; a rerun skips finished shards.
``load_expressive(OUT)`` gives ``{key: {instruction: expressive}}`` for the MGIE recipe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model.mgie.config import VICUNA_V1_1_SYSTEM

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".expressive.jsonl"
STATS_SUFFIX = ".expressive.stats.json"


@dataclass
class ExpressiveConfig:
    """One expressive-instruction run."""

    llava_dir: str | None = None
    """Frozen LLaVA (Hugging Face LlavaForConditionalGeneration dir, with tokenizer and preprocessor)."""
    summariser_dir: str | None = None
    """Local seq2seq summariser dir (AutoModelForSeq2SeqLM + tokenizer), e.g. a Flan-T5 checkpoint."""
    prompt_template: str = (VICUNA_V1_1_SYSTEM + " USER: what will this image be like if '{instruction}'  "
                            "(in a short paragraph)\n{image} ASSISTANT:")
    """The question to LLaVA (two spaces before the parenthesis, as in the official notebook)."""
    max_new_tokens: int = 1024
    """Greedy generation length of the description (official: 1024)."""
    summary_prompt: str = "summarize the following paragraph in 32 words:\n\n{text}"
    """Input to the summariser (official)."""
    num_beams: int = 5
    """Summariser beams (official: 5)."""
    min_length: int = 5
    """Summariser minimum length in tokens (official: 5)."""
    max_length: int = 64
    """Summariser maximum length in tokens (official: 64)."""
    no_repeat_ngram_size: int = 3
    """Summariser constraint (official: 3)."""
    max_words: int = 32
    """Hard cap on the summary's words (the summariser is only asked for 32)."""
    device: str = "cpu"
    """Where both models run."""

    def __post_init__(self) -> None:
        if "{instruction}" not in self.prompt_template or "{image}" not in self.prompt_template:
            raise ValueError("ExpressiveConfig.prompt_template must contain '{instruction}' and '{image}'")
        if "{text}" not in self.summary_prompt:
            raise ValueError("ExpressiveConfig.summary_prompt must contain '{text}'")
        if min(self.max_new_tokens, self.num_beams, self.max_length, self.max_words) < 1 or \
                self.min_length > self.max_length:
            raise ValueError("ExpressiveConfig: max_new_tokens, num_beams, max_length, max_words must be >= 1 and "
                             "min_length <= max_length")


def clean_description(text: str, first_img_token: str = "[IMG0]", eos_token: str | None = "</s>") -> str:
    """The official ``remove_alter``: drop anything after 'ASSISTANT:'-prefix / </s> / 'alternative' / [IMG0], keep
    the first two sentences, end with a full stop. '' when nothing is left."""
    if "ASSISTANT:" in text:
        text = text[text.index("ASSISTANT:") + len("ASSISTANT:"):].strip()
    if eos_token and eos_token in text:
        text = text[:text.index(eos_token)].strip()
    low = text.lower()
    if "alternative" in low:
        text = text[:low.index("alternative")]
    if first_img_token in text:
        text = text[:text.index(first_img_token)]
    # The official joins the two sentences with "." and no space ("red.The"); a space keeps the words apart.
    text = ". ".join(s.strip() for s in text.split(".")[:2] if s.strip()).strip()
    if not text:
        return ""
    return text if text.endswith(".") else text + "."


class Describer(Protocol):
    def describe(self, image, instruction: str) -> str: ...


class Summariser(Protocol):
    def __call__(self, texts: list[str]) -> list[str]: ...


class LLaVADescriber:
    """A frozen LLaVA from a local directory answering the expressive question greedily."""

    def __init__(self, config: ExpressiveConfig) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        from model.llava import num_image_placeholders

        if not config.llava_dir or not (Path(config.llava_dir) / "config.json").is_file():
            raise FileNotFoundError(f"llava_dir {config.llava_dir!r}: no config.json; pass a LlavaForConditionalGeneration "
                                    f"save_pretrained directory")
        self.config = config
        dtype = torch.float32 if config.device == "cpu" else torch.bfloat16
        self.model = LlavaForConditionalGeneration.from_pretrained(config.llava_dir, dtype=dtype).to(config.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(config.llava_dir)
        self.image_processor = AutoImageProcessor.from_pretrained(config.llava_dir)
        self.num_placeholders = num_image_placeholders(self.model.config)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def describe(self, image, instruction: str) -> str:
        """Greedy answer (decoded, special tokens kept for the cleaning rule)."""
        import torch

        pre, post = self.config.prompt_template.split("{image}", 1)
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids += self._ids(pre.format(instruction=instruction)) + [self.model.config.image_token_id] * self.num_placeholders
        ids += self._ids(post.format(instruction=instruction))
        input_ids = torch.tensor([ids], device=self.config.device)
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      pixel_values=pixels.to(self.config.device, self.model.dtype), do_sample=False,
                                      num_beams=1, max_new_tokens=self.config.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=False)


class Seq2SeqSummariser:
    """A local seq2seq model (Flan-T5 or any AutoModelForSeq2SeqLM dir) with the official generation settings.
    transformers' generate is used directly (the 'summarization' pipeline task is gone in transformers 5)."""

    def __init__(self, config: ExpressiveConfig) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if not config.summariser_dir or not (Path(config.summariser_dir) / "config.json").is_file():
            raise FileNotFoundError(f"summariser_dir {config.summariser_dir!r}: no config.json; pass a seq2seq "
                                    f"save_pretrained directory (e.g. Flan-T5)")
        self.config = config
        self.model = AutoModelForSeq2SeqLM.from_pretrained(config.summariser_dir).to(config.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(config.summariser_dir)

    def __call__(self, texts: list[str]) -> list[str]:
        import torch

        cfg = self.config
        batch = self.tokenizer([cfg.summary_prompt.format(text=t) for t in texts], return_tensors="pt", padding=True,
                               truncation=True).to(cfg.device)
        with torch.no_grad():
            out = self.model.generate(**batch, num_beams=cfg.num_beams, min_length=cfg.min_length,
                                      max_length=cfg.max_length, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                      do_sample=False)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------------------------
def _instructions(meta: dict[str, Any]) -> list[str]:
    found = [str(i) for i in (meta.get("instructions") or []) if str(i).strip()]
    first = str(meta.get("instruction") or "").strip()
    return list(dict.fromkeys(([first] if first else []) + found))


def express_samples(samples: Iterable[dict[str, Any]], describer: Describer, summariser: Summariser,
                    config: ExpressiveConfig, counts: Counter) -> Iterator[dict[str, str]]:
    """Decoded edit samples (model.data.decode_members) → sidecar records; drops are counted in ``counts``
    under their reason (``counts['in']`` = records considered = kept + every drop)."""
    from model.data import _image

    for sample in samples:
        meta, key = sample["json"], sample["__key__"]
        instructions = _instructions(meta)
        if meta.get("kind") != "edit_pair" or not instructions:
            counts["in"] += 1
            counts["not_an_edit_pair" if meta.get("kind") != "edit_pair" else "no_instruction"] += 1
            continue
        try:
            image = _image(sample, "src.")
        except ValueError:
            counts["in"] += len(instructions)
            counts["no_source_image"] += len(instructions)
            continue
        for instruction in instructions:
            counts["in"] += 1
            description = clean_description(describer.describe(image, instruction))
            if not description.strip(" ."):
                counts["empty_description"] += 1
                continue
            summary = " ".join(summariser([description])[0].split()[:config.max_words])
            if not summary:
                counts["empty_summary"] += 1
                continue
            counts["kept"] += 1
            yield {"key": key, "instruction": instruction, "description": description, "expressive": summary}


def dataset_name(index: Path) -> str:
    """Sidecar subdirectory of one dataset: its directory and parent ('magicbrush-train' style)."""
    parts = index.parent.parts[-2:]
    return "-".join(parts) if parts else "dataset"


def shard_urls(index: Path | str) -> list[Path]:
    """The shard files of a dataset (from its shardindex.json)."""
    from pipeline.manifest import index_path, load_manifest

    path = index_path(index)
    return [(path.parent / s["url"]).resolve() if not Path(s["url"]).is_absolute() else Path(s["url"])
            for s in load_manifest(path)["shardlist"]]


def express_shard(shard: Path | str, out_dir: Path | str, describer: Describer, summariser: Summariser,
                  config: ExpressiveConfig) -> dict[str, Any]:
    """One shard → its sidecar + stats marker (skipped when the marker exists). Returns the stats."""
    import webdataset as wds

    from model.data import decode_members

    shard, out_dir = Path(shard), Path(out_dir)
    stem = shard.name.removesuffix(".tar")
    marker = out_dir / f"{stem}{STATS_SUFFIX}"
    if marker.exists():
        return {**json.loads(marker.read_text()), "skipped": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    samples = (decode_members(s) for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    records = list(express_samples(samples, describer, summariser, config, counts))
    sidecar = out_dir / f"{stem}{SIDECAR_SUFFIX}"
    _atomic_write(sidecar, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rejected = {k: v for k, v in counts.items() if k not in ("in", "kept")}
    stats = {"shard": str(shard), "sidecar": str(sidecar), "in": counts["in"], "kept": counts["kept"],
             "rejected": rejected, "config": dataclasses.asdict(config)}
    if stats["in"] != stats["kept"] + sum(rejected.values()):
        raise AssertionError(f"{shard}: counts do not add up: {stats}")
    _atomic_write(marker, json.dumps(stats, indent=1) + "\n")
    log.info("%s: %d of %d instructions expressed (%s)", shard.name, stats["kept"], stats["in"], rejected or "no drops")
    return {**stats, "skipped": False}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_models(config: ExpressiveConfig) -> tuple[LLaVADescriber, Seq2SeqSummariser]:
    """The default describer and summariser from the config's directories."""
    return LLaVADescriber(config), Seq2SeqSummariser(config)


def express_datasets(inputs: list[str], out: str, config: ExpressiveConfig, describer: Describer | None = None,
                     summariser: Summariser | None = None) -> list[dict[str, Any]]:
    """Every shard of every input dataset (shardindex.json or a directory holding them); returns per-shard stats."""
    from pipeline.manifest import find_manifests

    if describer is None or summariser is None:
        describer, summariser = build_models(config)
    results = []
    for root in inputs:
        indexes = find_manifests(root)
        if not indexes:
            raise FileNotFoundError(f"expressive: {root} holds no shardindex.json; pass converted edit-pair shards")
        for index in indexes:
            for shard in shard_urls(index):
                results.append(express_shard(shard, Path(out) / dataset_name(index), describer, summariser, config))
    return results


def load_expressive(paths: str | Path | Iterable[str | Path]) -> dict[str, dict[str, str]]:
    """Sidecars under ``paths`` → {sample key: {instruction: expressive instruction}}."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    table: dict[str, dict[str, str]] = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob(f"*{SIDECAR_SUFFIX}"))
        if not files:
            raise FileNotFoundError(f"{root}: no *{SIDECAR_SUFFIX} sidecars; run `smartedit expressive` first")
        for file in files:
            for line in file.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    table.setdefault(rec["key"], {})[rec["instruction"]] = rec["expressive"]
    return table
