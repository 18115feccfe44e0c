"""Import a full-size SmartEdit release (official layout, random weights) and time one edit.

    python bench/import_edit.py --size 7b --device cuda [--workdir /scratch/se] [--out results.json]   # one GPU
    python bench/import_edit.py --size tiny --device cpu --steps 4                                    # smoke test

Writes a random-weight release with the released key names and shapes (``tests/official_fixtures.py``: LLaMA-7B/13B
+ unmerged LoRA r=8 + 32035-row embedding, LAVIS QFormer, SAM-named BIM, ``unet.``-prefixed SD-1.5 UNet) plus
random CLIP-L/14-224, SD-1.5 VAE and CLIP-L text encoder folders, stored in bf16 (fp32 for --size tiny); runs
``smartedit import-checkpoint smartedit-official`` (timed), loads the pipeline in bf16 on the device, and runs one edit
at 256 px, 100 Euler-ancestral steps, three-way CFG (after a 2-step warm-up). Reports import seconds, load seconds,
seconds per edit and peak device memory. No weights are downloaded: nothing here needs the network.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("tiny", "7b", "13b"), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workdir", default=None, help="where to write the release and the pipeline (≈ 30 GB for 7b)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from model.importers import import_checkpoint
    from model.pipeline import SmartEditPipeline
    from tests.official_fixtures import SEVEN_B, THIRTEEN_B, TINY, write_official

    widths = {"tiny": TINY, "7b": SEVEN_B, "13b": THIRTEEN_B}[args.size]
    dtype = torch.float32 if args.size == "tiny" else torch.bfloat16
    work = Path(args.workdir or tempfile.mkdtemp(prefix="smartedit-bench-"))
    figures: dict = {"size": args.size, "device": args.device, "steps": args.steps, "resolution": args.resolution,
                     "python": platform.python_version(), "torch": torch.__version__}
    t0 = time.perf_counter()
    paths = write_official(work / "src", widths, seed=0, dtype=dtype)
    figures["write_release_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    import_checkpoint("smartedit-official", paths["release"], work / "pipe", vicuna=str(paths["vicuna"]),
                      clip_vision=str(paths["clip_vision"]), sd=str(paths["sd"]))
    figures["import_s"] = round(time.perf_counter() - t0, 1)

    cuda = args.device.startswith("cuda")
    run_dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    pipe = SmartEditPipeline.from_pretrained(work / "pipe", device=args.device, dtype=run_dtype)
    figures["load_s"] = round(time.perf_counter() - t0, 1)
    image = Image.fromarray((np.random.default_rng(0).random((320, 480, 3)) * 255).astype("uint8"))
    instruction = "Replace the cup on the left with a red apple."

    def edit(steps: int):
        generator = torch.Generator(device=args.device).manual_seed(0)
        return pipe(image, instruction, num_inference_steps=steps, generator=generator, height=args.resolution,
                    width=args.resolution)

    edit(2)  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        figures["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    edit(args.steps)
    if cuda:
        torch.cuda.synchronize()
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    figures["s_per_edit"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
