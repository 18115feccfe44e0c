"""Shard → training example → batch.

A `MixtureDataset` is map-style over *draw indices*: item ``i`` is draw ``i`` of this rank's mixture
stream (model/mixture.py), read by index from the tar shards with ``wids``, decoded, and rendered into a
`TrainExample` per sample kind (edit pair as is; segmentation kinds as colour-overlay edits, model/overlay.py;
VQA as an LM-only example; captions for stage 1). A `DrawSampler` yields ``start, start+1, ...``,
so the stream position saved in a checkpoint is just the next draw index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from model.mixture import Draw, Mixture, MixtureSampler
from model.overlay import OverlayTemplates, labelmap_edit, load_templates, reasoning_edit, referring_edit
from pipeline.shards import IMAGE_EXTENSIONS, decode_sample, image_member, open_indexed

log = logging.getLogger(__name__)


@dataclass
class TrainExample:
    """One rendered training example.

    source / target: RGB PIL images at the training resolution (target = source for VQA and captions;
    None for captions). answer: the LM target text for VQA (None for edits: their LM target is the [IMG] tokens).
    is_edit: the diffusion loss applies. caption: stage-1 text.
    """

    key: str
    kind: str
    source_name: str
    instruction: str
    source: Image.Image | None = None
    target: Image.Image | None = None
    answer: str | None = None
    is_edit: bool = True
    caption: str | None = None


class SampleError(ValueError):
    """A sample that cannot be rendered (bad member, unknown kind); the message names the key and the member."""


def decode_members(raw: dict[str, Any]) -> dict[str, Any]:
    """wids sample ({'.jpg': BytesIO, '.json': ..., '__key__': ...}) → {'json': dict, 'jpg': RGB PIL, 'mask.png': (H, W) uint8}.

    Decoding is the shard contract's (`pipeline.shards.decode_sample`): images as displayed (EXIF
    orientation applied, as the converters' masks and sizes assume), masks single-channel and untouched.
    """
    try:
        return decode_sample(raw)
    except ValueError as err:
        raise SampleError(str(err)) from None


def _image(sample: dict[str, Any], prefix: str = "") -> Image.Image:
    name = image_member(sample, prefix)
    if name is None:
        raise SampleError(f"sample {sample['__key__']}: no {prefix or ''}image member ({', '.join(prefix + e for e in IMAGE_EXTENSIONS)})")
    return sample[name]


def square_resize(image: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to (size, size). No flips: left/right instructions."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def _mask_resized(mask: np.ndarray, size: int) -> np.ndarray:
    return np.array(square_resize(Image.fromarray(mask), size, Image.Resampling.NEAREST))


def _vqa_round(conversations: list[dict[str, str]], rng: np.random.Generator, key: str) -> tuple[str, str]:
    """One (human, gpt) round of a LLaVA conversation, the `<image>` marker removed (the model places the image)."""
    rounds = [(conversations[i]["value"], conversations[i + 1]["value"]) for i in range(0, len(conversations) - 1, 2)
              if conversations[i].get("from") == "human" and conversations[i + 1].get("from") == "gpt"]
    if not rounds:
        raise SampleError(f"sample {key}: json.conversations has no human→gpt round")
    question, answer = rounds[int(rng.integers(len(rounds)))]
    return question.replace("<image>", "").strip(), answer.strip()


def render_example(sample: dict[str, Any], rng: np.random.Generator, *, resolution: int,
                   templates: OverlayTemplates | None = None) -> TrainExample:
    """A decoded sample → TrainExample by kind (data_specs/schemas.yaml). Randomness only from ``rng``."""
    meta, key = sample["json"], sample["__key__"]
    kind, source_name = meta.get("kind"), str(meta.get("source", "?"))
    if kind == "caption":
        return TrainExample(key, kind, source_name, "", caption=str(meta["caption"]), is_edit=False)
    if kind == "edit_pair":
        instructions = list(meta.get("instructions") or []) or [meta["instruction"]]
        instruction = instructions[int(rng.integers(len(instructions)))]
        src = square_resize(_image(sample, "src."), resolution)
        tgt = square_resize(_image(sample, "tgt."), resolution)
        return TrainExample(key, kind, source_name, instruction, src, tgt)
    if kind == "vqa":
        question, answer = _vqa_round(meta["conversations"], rng, key)
        src = square_resize(_image(sample), resolution)
        return TrainExample(key, kind, source_name, question, src, src, answer=answer, is_edit=False)

    # Segmentation kinds: resize first (masks with nearest), then blend, so the overlay is exact at training size.
    image = np.array(square_resize(_image(sample), resolution))
    if kind == "seg_labelmap":
        edit = labelmap_edit(image, _mask_resized(sample["seg.png"], resolution), meta["classes"], rng, templates=templates)
    elif kind == "referring_mask":
        mask = _mask_resized(sample["mask.png"], resolution) > 127
        edit = referring_edit(image, mask, meta["sentences"], bool(meta.get("no_target", False)), rng, templates=templates)
    elif kind == "reasoning_seg":
        mask = _mask_resized(sample["mask.png"], resolution) > 127
        ignore = _mask_resized(sample["ignore.png"], resolution) > 127
        edit = reasoning_edit(image, mask, ignore, meta["sentences"], bool(meta.get("is_sentence", False)), rng,
                              templates=templates)
    else:
        raise SampleError(f"sample {key}: json.kind {kind!r} is not a training kind (see data_specs/schemas.yaml)")
    return TrainExample(key, kind, source_name, edit.instruction, Image.fromarray(edit.source), Image.fromarray(edit.target))


class MixtureDataset:
    """Map-style dataset over draw indices: ``ds[i]`` = featurize(render(read(draw i))).

    featurize: TrainExample → dict of tensors (the model's processor, adapted in the recipe).
    Readers (wids) open lazily in each process, so the dataset pickles into DataLoader workers.
    A sample that fails to decode or render raises `SampleError` (see ``example``).
    """

    def __init__(self, mixture: Mixture, featurize: Callable[[TrainExample], dict[str, Any]], *, rank: int = 0,
                 seed: int | None = None, resolution: int = 256, templates: OverlayTemplates | None = None):
        self.mixture = mixture
        self.sampler = MixtureSampler(mixture, rank=rank, seed=seed)
        self.featurize = featurize
        self.resolution = resolution
        self.templates = templates or load_templates()
        self._readers: dict[int, Any] = {}

    def _reader(self, dataset: int):
        if dataset not in self._readers:
            self._readers[dataset] = open_indexed(self.mixture.datasets[dataset].index_path)
        return self._readers[dataset]

    def read(self, draw: Draw) -> dict[str, Any]:
        return decode_members(self._reader(draw.dataset)[draw.sample])

    def example(self, index: int) -> TrainExample:
        """Draw ``index`` rendered. A sample that cannot be read or rendered is an error naming the draw, the
        dataset, the sample and the reason, never a silent re-draw: the writer validated every sample, so a bad
        one is a damaged shard or a bug, and training on a substitute would hide it."""
        draw = self.sampler.draw(index)
        ref = self.mixture.datasets[draw.dataset]
        try:
            return render_example(self.read(draw), np.random.default_rng(draw.render_seed),
                                  resolution=self.resolution, templates=self.templates)
        except (SampleError, OSError, KeyError) as err:
            reason = f"json has no field {err}" if isinstance(err, KeyError) else str(err)
            raise SampleError(f"draw {index}: sample {draw.sample} of {ref.index_path} is unusable: {reason}; "
                              f"check the shards with `smartedit shards verify` and rebuild the dataset") from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.featurize(self.example(index))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state


class DrawSampler:
    """Yields draw indices ``start, start+1, ...`` forever; the stream position is the next index."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


def make_dataloader(dataset: MixtureDataset, *, batch_size: int, start: int = 0, num_workers: int = 0,
                    collate_fn: Callable | None = None):
    """A torch DataLoader over draws ``start, start+1, ...`` (not accelerate-prepared: ranks draw their own streams)."""
    import torch
    from torch.utils.data import DataLoader

    # Its own generator: creating the iterator would otherwise draw a base seed from the global torch RNG,
    # shifting the model's RNG stream (CFG dropout, noise) between a fresh and a resumed run.
    return DataLoader(dataset, batch_size=batch_size, sampler=DrawSampler(start), num_workers=num_workers,
                      collate_fn=collate_fn, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(start))
