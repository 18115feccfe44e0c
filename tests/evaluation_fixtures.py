"""Builders for the evaluation tests: a tiny Reason-Edit tree, tiny random CLIP and LPIPS weights on disk,
and a deterministic editor. Everything is generated here; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CATEGORY_FILES = {
    "1-Left-Right": "Left_Right_text.txt",
    "2-Relative-Size": "Size_text.txt",
    "3-Mirror": "Mirror_text.txt",
    "4-Color": "Color_text.txt",
    "5-Multiple-Objects": "MultipleObjects_text.txt",
    "6-Reasoning": "Reason_test.txt",
}


def pattern_image(seed: int, size: int = 64) -> Image.Image:
    """A smooth random RGB image (smooth so that SSIM/LPIPS are not dominated by noise)."""
    rng = np.random.default_rng(seed)
    low = rng.random((8, 8, 3))
    up = np.kron(low, np.ones((size // 8, size // 8, 1)))
    return Image.fromarray((up * 255).astype(np.uint8), "RGB")


def box_mask(size: int, box: tuple[int, int, int, int]) -> Image.Image:
    """White (255) inside box = (left, top, right, bottom), end-exclusive; black elsewhere."""
    m = np.zeros((size, size), np.uint8)
    left, top, right, bottom = box
    m[top:bottom, left:right] = 255
    return Image.fromarray(m, "L")


def make_reason_edit(root: Path, per_category: int = 2, size: int = 64, nested: str = "") -> Path:
    """A Reason-Edit tree with ``per_category`` items in every category, optionally nested one level down."""
    base = root / nested if nested else root
    for c, (category, text_name) in enumerate(CATEGORY_FILES.items()):
        folder = base / category
        folder.mkdir(parents=True)
        lines = []
        for i in range(per_category):
            stem = f"{i + 1:03d}"
            pattern_image(100 * c + i, size).save(folder / f"{stem}.png")
            box_mask(size, (8 + 4 * i, 8, 40 + 4 * i, 48)).save(folder / f"{stem}_mask.jpg", quality=90)
            lines.append(f"make the object {category.lower()} {i}  CLIP: a photo of thing {i}")
        (folder / text_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def brighten_editor(image: Image.Image, instruction: str, *, generator) -> Image.Image:
    """Deterministic stand-in for SmartEditPipeline: brightens the image by an amount drawn from the generator
    and adds a fixed offset depending on the instruction length."""
    import torch

    amount = int(torch.randint(5, 20, (1,), generator=generator)) + len(instruction) % 3
    a = np.asarray(image.convert("RGB"), dtype=np.int16) + amount
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def make_tiny_clip(path: Path, image_size: int = 32) -> Path:
    """A random 2-layer CLIPModel + CLIPProcessor (character-level tokenizer) saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_lpips(path: Path, net: str = "alex", heads: bool = True, seed: int = 0) -> Path:
    """Random torchvision backbone weights (features only, to keep the file small) and random LPIPS heads."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    if net == "alex":
        model, name, chns = torchvision.models.alexnet(weights=None), "alexnet.pth", [64, 192, 384, 256, 256]
    else:
        model, name, chns = torchvision.models.squeezenet1_1(weights=None), "squeezenet1_1.pth", [64, 128, 256, 384, 384, 512, 512]
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, path / name)
    if heads:
        torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(chns)},
                   path / ("alex.pth" if net == "alex" else "squeeze.pth"))
    return path


# ---------------------------------------------------------------- evaluation shards with target images
BLUE, RED = (0, 0, 255), (255, 0, 0)


def square_scene(seed: int, size: int = 64) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(input, mask, target): a smooth background (never pure blue) with a pure-blue square; the target has the
    square red. The instruction "make the blue square red" is followed exactly by ``follow_editor``."""
    rng = np.random.default_rng(seed)
    base = np.asarray(pattern_image(seed, size), dtype=np.int16)
    base = (40 + base * 160 // 255).astype(np.uint8)  # values 40..200: no pixel is pure blue or pure red
    side = size // 4
    x, y = (int(v) for v in rng.integers(0, size - side, 2))
    region = np.zeros((size, size), bool)
    region[y:y + side, x:x + side] = True
    src, tgt = base.copy(), base.copy()
    src[region], tgt[region] = BLUE, RED
    return Image.fromarray(src, "RGB"), Image.fromarray(region.astype(np.uint8) * 255, "L"), Image.fromarray(tgt, "RGB")


def make_edit_shards(directory: Path, n: int = 12, size: int = 64) -> Path:
    """One webdataset shard of ``n`` edit_pair samples with src.png, mask.png, tgt.png and json."""
    import io
    import json

    import webdataset as wds

    def png(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    directory.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(directory / "eval-000000.tar")) as sink:
        for i in range(n):
            src, mask, tgt = square_scene(i, size)
            category = "4-Color" if i % 2 else "6-Reasoning"
            sink.write({"__key__": f"sq{i:03d}", "src.png": png(src), "mask.png": png(mask), "tgt.png": png(tgt),
                        "json": json.dumps({"kind": "edit_pair", "instruction": "make the blue square red",
                                            "clip_text": "a red square", "source_caption": "a blue square",
                                            "category": category}).encode()})
    return directory


def follow_editor(image: Image.Image, instruction: str, *, generator=None) -> Image.Image:
    """Follows "make the blue square red" exactly: pure-blue pixels become pure red, nothing else changes."""
    a = np.asarray(image.convert("RGB")).copy()
    a[(a == BLUE).all(axis=-1)] = RED
    return Image.fromarray(a, "RGB")


def sloppy_editor(image: Image.Image, instruction: str, *, generator=None) -> Image.Image:
    """Follows the instruction but also brightens the whole background by 4 levels (worse fidelity,
    still closer to the targets than doing nothing)."""
    a = np.asarray(image.convert("RGB")).astype(np.int16)
    blue = (a == BLUE).all(axis=-1)
    a = np.clip(a + 4, 0, 255)
    a[blue] = RED
    return Image.fromarray(a.astype(np.uint8), "RGB")


def make_tiny_dino(path: Path, image_size: int = 32) -> Path:
    """A random 2-layer DINOv2 (transformers Dinov2Model) and its image processor, saved with save_pretrained."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=image_size, patch_size=8)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      do_convert_rgb=True).save_pretrained(path)
    return path


def make_tiny_llava(path: Path, image_size: int = 32) -> Path:
    """A random 2-layer LLaVA (LlavaForConditionalGeneration) with a word-level tokenizer and a LlavaProcessor,
    saved with save_pretrained: what ``VlmJudge`` loads."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER", "ASSISTANT", ":", "score", "{", "}", "[", "]", ","]
    words += [str(d) for d in range(11)] + "the image edit follows instruction natural artifacts json reply".split()
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=image_size, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=vocab["<pad>"], bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
