"""Synthetic edit-pair builder throughput.

    python bench/synthetic.py cpu [--repeats 2] [--scenes DIR]      # pairs/s per stage, CPU editor
    python bench/synthetic.py gpu [--pairs 16] [--batch 8]          # batched vs per-pair inpainting (CUDA)

cpu: the sample data (pipeline.samples.make_samples: rendered COCO-format scenes, 240–640 px) through
a full `build` (plan + shards + manifest + export + contact sheet + data card) with the CPU editor
(CIELAB recolour, OpenCV removal, best of 3, verification) and annotation masks, the leakage guard on
the sample Reason-Edit set. Every stage times its own work (pipeline.synthetic.stages), so items/s per
stage come from the build's yields table.

gpu: a real-size SD-1.5 inpainting architecture (UNet 320/640/1280/1280 with 9 input channels, SD VAE,
CLIP ViT-L/14 text encoder) at random weights, fp16, saved and loaded through the builder's own
`InpaintEditor`, 512 px, 50 steps: one pipeline call per batch of pairs vs one call per pair.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def bench_cpu(scenes: Path | None, repeats: int) -> None:
    import torch

    from pipeline.synthetic import build as b
    from pipeline.synthetic.config import SCENARIOS, SyntheticConfig

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    if scenes is None:
        from pipeline.samples import make_samples

        scenes = make_samples(tmp / "samples", seed=0).root
    cfg = SyntheticConfig(scenarios={s: 1000 for s in SCENARIOS}, shard_size=64,
                          eval_sets=[str(Path(scenes) / "reason_edit")])
    inputs = b.BuildInputs(input=str(scenes))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, torch threads 2")

    # Every stage times its own work (pipeline.synthetic.stages), so one full build gives the per-stage
    # figures without re-running stages in isolation.
    seconds: dict[str, list[float]] = {}
    items: dict[str, int] = {}
    totals: list[float] = []
    kept = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        result = b.build(cfg, inputs, tmp / f"build{r}")
        totals.append(time.perf_counter() - t0)
        kept = result["kept"]
        for row in result["yields"]:
            seconds.setdefault(row["stage"], []).append(row["seconds"])
            items[row["stage"]] = row["in"]
    print(f"{kept} pairs kept from the sample data; median of {repeats} runs")
    print(f"{'stage':<22} {'items in':>9} {'seconds':>8} {'items/s':>9}")
    for name, times in seconds.items():
        t = statistics.median(times)
        print(f"{name:<22} {items[name]:9d} {t:8.3f} {items[name] / t if t else float('inf'):9.1f}")
    t = statistics.median(totals)
    print(f"{'end-to-end build':<22} {kept:9d} {t:8.3f} {kept / t:9.1f}  (kept pairs/s)")


def _sd15_inpaint_dir(root: Path) -> Path:
    """Random-weight SD-1.5 inpainting architecture saved like a real checkpoint (fp16)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, vocab_size=49408, max_position_embeddings=77,
                                        projection_dim=768, hidden_act="quick_gelu"))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77), unet=unet,
        scheduler=PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(torch.float16)
    path = root / "sd15-inpaint-random"
    pipe.save_pretrained(path)
    return path


def bench_gpu(n_pairs: int, batch: int) -> None:
    import numpy as np
    import torch

    from pipeline.synthetic.colour_naming import load_colour_table
    from pipeline.synthetic.editors import InpaintEditor
    from pipeline.synthetic.instructions import EditJob
    from pipeline.synthetic.pair import EditPair

    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs CUDA (not run: no GPU)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-synthetic-gpu-"))
    editor = InpaintEditor(_sd15_inpaint_dir(tmp), load_colour_table(), device="cuda", resolution=512, steps=50)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n_pairs):
        src = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        mask = np.zeros((480, 640), bool)
        mask[100:300, 200:400] = True
        job = EditJob(key=f"k{i}", split="bench", image_id=i, file_name=f"{i}.jpg", image_path="-", annotations="-",
                      width=640, height=480, scenario="left_right", selector={}, target={"ann_id": i},
                      operation="replace", referent="the left dog", instructions=["Replace the left dog with a fox"],
                      target_description="a fox", prompt="a photo of a fox", source_caption="", target_caption="",
                      seed=i)
        pairs.append(EditPair(job, src, mask, mask=mask, edit_mask=mask))
    editor.edit(pairs[:1])  # warm-up: kernels, cuDNN autotune
    print(f"GPU: {torch.cuda.get_device_name()}, SD-1.5 inpainting architecture (random weights), fp16, 512 px, 50 steps")
    for label, size in (("one call per pair", 1), (f"batched ({batch} per call)", batch)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start in range(0, n_pairs, size):
            editor.edit(pairs[start:start + size])
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        print(f"{label:<28} {t:8.2f} s  {n_pairs / t:6.2f} pairs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scenes", type=Path, help="a sample-data directory (default: make one)")
    p = sub.add_parser("gpu")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.mode == "cpu":
        bench_cpu(args.scenes, args.repeats)
    else:
        bench_gpu(args.pairs, args.batch)


if __name__ == "__main__":
    main()
