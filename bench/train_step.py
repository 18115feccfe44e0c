"""Training step time and throughput of SmartEdit, measured in one run.

    python bench/train_step.py [--micro-batches 1 2 4] [--steps 10] [--out results.json]       # tiny preset, CPU
    python bench/train_step.py --gpu [--micro-batches 1 2 4 8 16] [--out results.json]         # 7B-size, one GPU

CPU mode: the tiny preset (random, CPU) — stage-2 optimizer step time and samples/s per micro-batch size, and the
data path alone (shard read + decode + colour-overlay render at 256 px) in samples/s.

GPU mode: the 7B-size architecture at random weights, built in code (no downloads): LLaMA-7B-shaped decoder
(4096 wide, 32 layers, 32 heads, FFN 11008, vocab 32000, bf16, frozen, LoRA), CLIP ViT-L/14 vision tower at 224 px,
SD-1.5 UNet (320/640/1280/1280, 8 input channels) and VAE, CLIP-L text encoder, QFormer and BIM at paper sizes.
Per micro-batch 1–16: step time, samples/s, peak memory, and MFU = (FLOPs of one step counted with
torch.utils.flop_counter) / step time / (measured bf16 matmul ceiling of this GPU). Then inference: seconds and
peak memory per edit at 256 px, 100 Euler-ancestral steps, three-way CFG. The tokenizer is the byte-level stand-in
(prompt lengths therefore differ from LLaMA's SentencePiece by a small factor).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

INSTRUCTION = "Replace the cup on the left with a red apple and leave the rest unchanged."


def _images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 7) % 256, ((xx + yy) // 3) % 256], -1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)))
    return out


def _batch(model, micro_batch: int, size: int):
    """A stage-2 batch of ``micro_batch`` edit samples through the model's own processor."""
    images = _images(2 * micro_batch, size)
    samples = [model.processor.encode(images[2 * i], INSTRUCTION, target=images[2 * i + 1]) for i in range(micro_batch)]
    return model.processor.collate(samples)


def _step_fn(model, optimizer, device, autocast_dtype):
    import torch

    def step(batch):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    return step


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, micro_batch: int, steps: int, warmup: int, device, autocast_dtype, size: int) -> dict:
    import torch

    params = list(model.trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-3)
    batch = {k: v.to(device) for k, v in _batch(model, micro_batch, size).items()}
    step = _step_fn(model, optimizer, device, autocast_dtype)
    model.train()
    for _ in range(warmup):
        step(batch)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    del optimizer
    return {"micro_batch": micro_batch, "step_s": med, "samples_per_s": micro_batch / med, "steps": steps,
            "prompt_tokens": int(batch["input_ids"].shape[1])}


# ----------------------------------------------------------------------------------------------- CPU mode
def data_throughput(n: int = 200, resolution: int = 256) -> dict:
    """Shard read + decode + render (edit pairs and referring masks at 640×480 → 256 px), no model."""
    import webdataset as wds

    from model.data import MixtureDataset
    from model.mixture import uniform_mixture

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifests = []
        for name, kind in (("edits", "edit_pair"), ("refer", "referring_mask")):
            (root / name).mkdir()
            tar = root / name / f"{name}-000000.tar"
            imgs = _images(8, 480)
            with wds.TarWriter(str(tar)) as w:
                for i in range(64):
                    buf = io.BytesIO()
                    imgs[i % 8].resize((640, 480)).save(buf, "JPEG", quality=90)
                    meta = {"kind": kind, "source": name, "split": "train", "source_id": str(i)}
                    sample = {"__key__": f"{name}-{i:05d}"}
                    if kind == "edit_pair":
                        sample |= {"src.jpg": buf.getvalue(), "tgt.jpg": buf.getvalue()}
                        meta["instruction"] = INSTRUCTION
                    else:
                        mask = np.zeros((480, 640), np.uint8)
                        mask[100:300, 200:400] = 255
                        mbuf = io.BytesIO()
                        Image.fromarray(mask).save(mbuf, "PNG")
                        sample |= {"jpg": buf.getvalue(), "mask.png": mbuf.getvalue()}
                        meta |= {"sentences": ["the cup on the left"], "no_target": False}
                    sample["json"] = json.dumps(meta).encode()
                    w.write(sample)
            index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
                     "shardlist": [{"url": tar.name, "nsamples": 64, "filesize": tar.stat().st_size, "md5sum": ""}],
                     "provenance": {"source": name}}
            (root / name / "shardindex.json").write_text(json.dumps(index))
            manifests.append(root / name / "shardindex.json")
        ds = MixtureDataset(uniform_mixture(manifests), featurize=lambda ex: ex, resolution=resolution)
        ds.example(0)
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ds.example(i)
        dt = time.perf_counter() - t0
    return {"samples": n, "resolution": resolution, "samples_per_s": n / dt}


def run_cpu(args) -> dict:
    import torch

    from model.config import get_preset
    from model.smartedit import build_smartedit

    torch.set_num_threads(args.threads)
    model = build_smartedit(get_preset("tiny", stage=2))
    device = torch.device("cpu")
    rows = [time_steps(model, mb, args.steps, 2, device, None, model.config.resolution) for mb in args.micro_batches]
    return {"mode": "cpu", "preset": "tiny", "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "loadavg_1min": os.getloadavg()[0],  # other processes on a shared machine inflate step times
            "torch": torch.__version__, "train": rows, "data": data_throughput()}


# ----------------------------------------------------------------------------------------------- GPU mode
def build_7b_shaped_components(device) -> dict:
    """Random-weight parts with the real 7B-preset shapes (see module docstring), built on ``device``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from model.llava import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(model_max_length=2048)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=256,
                         projector_hidden_act="gelu")
    clip_tok = build_tiny_tokenizer(clip_style=True)
    previous = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        llava = LlavaForConditionalGeneration(config).eval()
        torch.set_default_dtype(previous)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, max_position_embeddings=77,
                                                    vocab_size=49408)).eval()
        unet = UNet2DConditionModel(sample_size=32, in_channels=8, out_channels=4, cross_attention_dim=768)  # SD-1.5
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=256).to(torch.bfloat16).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return {"llava": llava, "tokenizer": tokenizer, "image_processor": image_processor, "unet": unet, "vae": vae,
            "text_encoder": text_encoder, "text_tokenizer": clip_tok}


def matmul_ceiling(device, n: int = 8192, iters: int = 50) -> float:
    """Measured dense bf16 matmul throughput (FLOP/s): the MFU denominator."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def step_flops(model, micro_batch: int, device, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = list(model.trainable_parameters().values())
    optimizer = torch.optim.SGD(params, lr=0.0)  # FLOPs of forward+backward; the optimizer's are negligible
    batch = {k: v.to(device) for k, v in _batch(model, micro_batch, size).items()}
    counter = FlopCounterMode(display=False)
    with counter:
        _step_fn(model, optimizer, device, torch.bfloat16)(batch)
    return float(counter.get_total_flops())


def run_gpu(args) -> dict:
    import torch

    from model.config import get_preset
    from model.pipeline import SmartEditPipeline
    from model.smartedit import assemble_smartedit

    device = torch.device("cuda")
    ceiling = matmul_ceiling(device)
    # 7B-shaped parts built in memory, handed to the assembly seam (no checkpoint directories needed)
    model = assemble_smartedit(get_preset("7b", stage=2), build_7b_shaped_components(device)).to(device)
    n_params = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("llava", "unet", "qformer", "bim")}
    n_train = sum(p.numel() for p in model.trainable_parameters().values())
    rows = []
    for mb in args.micro_batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            row = time_steps(model, mb, args.steps, 2, device, torch.bfloat16, 256)
        except torch.OutOfMemoryError:
            rows.append({"micro_batch": mb, "oom": True})
            break
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["flops_per_step"] = step_flops(model, mb, device, 256)
        row["mfu"] = row["flops_per_step"] / row["step_s"] / ceiling
        rows.append(row)
    model.eval().requires_grad_(False)
    pipe = SmartEditPipeline(model)
    image = _images(1, 256)[0]
    gen = torch.Generator(device).manual_seed(0)
    pipe(image, INSTRUCTION, num_inference_steps=5, generator=gen)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    pipe(image, INSTRUCTION, num_inference_steps=100, generator=gen)
    _sync(device)
    infer = {"resolution": 256, "steps": 100, "seconds_per_edit": time.perf_counter() - t0,
             "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"mode": "gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "matmul_bf16_tflops": ceiling / 1e12, "params": n_params, "trainable_params": n_train, "train": rows,
            "inference": infer}


def markdown(result: dict) -> str:
    load = f", load average {result['loadavg_1min']:.1f}" if "loadavg_1min" in result else ""
    lines = [f"mode {result['mode']} — {result.get('device', result.get('machine'))}, torch {result['torch']}{load}", "",
             "| micro-batch | step s | samples/s | peak GiB | MFU |", "|---|---|---|---|---|"]
    for r in result["train"]:
        if r.get("oom"):
            lines.append(f"| {r['micro_batch']} | OOM | | | |")
            continue
        peak = f"{r['peak_mem_gib']:.1f}" if "peak_mem_gib" in r else "–"
        mfu = f"{r['mfu']:.3f}" if "mfu" in r else "–"
        lines.append(f"| {r['micro_batch']} | {r['step_s']:.4f} | {r['samples_per_s']:.2f} | {peak} | {mfu} |")
    if "data" in result:
        d = result["data"]
        lines += ["", f"data path (read + decode + render at {d['resolution']} px): {d['samples_per_s']:.0f} samples/s"]
    if "inference" in result:
        i = result["inference"]
        lines += ["", f"inference: {i['seconds_per_edit']:.2f} s/edit, peak {i['peak_mem_gib']:.1f} GiB "
                      f"({i['resolution']} px, {i['steps']} steps); bf16 matmul ceiling {result['matmul_bf16_tflops']:.0f} TFLOP/s"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="7B-size architecture on one GPU")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per micro-batch (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="CPU mode: torch threads")
    parser.add_argument("--out", default=None, help="write the JSON result here")
    args = parser.parse_args()
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("not run: no GPU")
            return 2
        args.micro_batches = args.micro_batches or [1, 2, 4, 8, 16]
        result = run_gpu(args)
    else:
        args.micro_batches = args.micro_batches or [1, 2, 4]
        result = run_cpu(args)
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
