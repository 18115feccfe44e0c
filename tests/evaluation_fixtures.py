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
