"""Curated mutation run: does the suite notice when a core behaviour breaks?

Each mutant is (module, name, exact original snippet, replacement, test files). For each, the runner copies the
tree once into a temporary directory, applies the one change there, runs the mutant's test files with
``PYTHONPATH`` pointing at the copy, and restores the file. A mutant is

- killed: the tests fail (exit code 1; a collection error counts too),
- survived: the tests pass: a behaviour nothing pins,
- n/a: the original snippet is not in the file exactly once (the code moved on: update the mutant),
- timeout: the tests ran past ``--timeout`` (counted as killed, mutmut's convention),
- baseline-fails: the tests already fail on the unmutated tree (checked first; counted with n/a, never as killed).

Why not mutmut: its random operator mutants on this tree are mostly equivalent or cosmetic (log strings,
docstrings) and a full run takes hours on two cores; a curated list names the behaviour each mutant breaks, so a
survivor reads as a missing test. The working tree is never modified.

Usage::

    python bench/mutants.py                         # every module, markdown table on stdout
    python bench/mutants.py --module pipeline/writer.py --verbose
    python bench/mutants.py --list                  # names only
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    module: str  # file path relative to the repository root
    name: str
    original: str
    replacement: str
    tests: tuple[str, ...]


_WRITER_T = ("tests/test_pins_writer.py", "tests/test_shards.py")
_MANIFEST_T = ("tests/test_pins_writer.py", "tests/test_pins_verify.py", "tests/test_shards.py")
_VERIFY_T = ("tests/test_pins_verify.py", "tests/test_shards.py")
_PICKLE_T = ("tests/test_pins_safe_pickle.py",)
_SCHEMA_T = ("tests/test_pins_schema.py",)
_PROV_T = ("tests/test_pins_writer.py",)
_SMARTEDIT_T = ("tests/test_pins_model.py",)
_PIPELINE_T = ("tests/test_pins_model.py", "tests/test_model_pipeline.py::test_unet_path_equals_diffusers_instruct_pix2pix")
_REGISTRY_T = ("tests/test_registry.py",)


def _m(module: str, tests: tuple[str, ...], *items: tuple[str, str, str]) -> list[Mutant]:
    return [Mutant(module, name, orig, repl, tests) for name, orig, repl in items]


MUTANTS: list[Mutant] = [
    *_m("pipeline/sources/safe_pickle.py", _PICKLE_T,
        ("and-to-or", "if module in _BUILTIN_MODULES and name in _ALLOWED:", "if module in _BUILTIN_MODULES or name in _ALLOWED:"),
        ("module-check-dropped", "if module in _BUILTIN_MODULES and name in _ALLOWED:", "if name in _ALLOWED:"),
        ("name-check-dropped", "if module in _BUILTIN_MODULES and name in _ALLOWED:", "if module in _BUILTIN_MODULES:"),
        ("allow-getattr", '"complex", "bool"}', '"complex", "bool", "getattr"}'),
        ("allow-import", '"complex", "bool"}', '"complex", "bool", "__import__"}'),
        ("allow-eval", '"complex", "bool"}', '"complex", "bool", "eval"}'),
        ("allow-os", '_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})',
         '_BUILTIN_MODULES = frozenset({"builtins", "__builtin__", "os", "posix"})'),
        ("py2-module-name-dropped", '_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})',
         '_BUILTIN_MODULES = frozenset({"builtins"})'),
        ("set-dropped", '{"list", "dict", "tuple", "set",', '{"list", "dict", "tuple",'),
        ("persistent-ids-admitted", 'raise UnsafePickleError(f"{self._source}: refused persistent id', 'return pid or (f"{self._source}: refused persistent id'),
        ("latin1-fallback-dropped", 'return obj.decode("latin-1")', "return obj"),
        ("bytes-not-decoded", "if isinstance(obj, bytes):\n        try:", "if isinstance(obj, bytearray):\n        try:"),
        ("tuples-not-decoded", "return tuple(_to_text(x) for x in obj)", "return obj"),
        ("dict-keys-not-decoded", "return {_to_text(k): _to_text(v) for k, v in obj.items()}", "return {k: _to_text(v) for k, v in obj.items()}"),
        ("stock-loads", 'value = RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load()',
         'value = pickle.loads(data, encoding="bytes")'),
        ("source-not-named", "return safe_loads(path.read_bytes(), source=str(path))", "return safe_loads(path.read_bytes())"),
    ),
    *_m("pipeline/writer.py", _WRITER_T,
        ("wall-clock-mtime", "TAR_MTIME = 0", "import time as _t; TAR_MTIME = int(_t.time())"),
        ("mtime-not-set", "info.mtime = TAR_MTIME\n", ""),
        ("mode-writable", "info.mode = 0o444", "info.mode = 0o644"),
        ("owner-unset", "info.uname = info.gname = TAR_OWNER", "info.uname = TAR_OWNER"),
        ("members-unsorted", 'for ext in sorted(k for k in sample if k != "__key__"):', 'for ext in [k for k in sample if k != "__key__"]:'),
        ("no-temp-file", "tmp = temporary_path(path)\n    sink", "tmp = path\n    sink"),
        ("no-fsync", "        os.fsync(self._f.fileno())\n        self._f.close()", "        self._f.close()"),
        ("marker-ignored", "if marker.exists() and path.exists():", "if False:"),
        ("marker-alone-trusted", "if marker.exists() and path.exists():", "if marker.exists():"),
        ("duplicate-keys-admitted", "if sample.key in seen:", "if False:"),
        ("validation-skipped", "    if validate:\n        try:", "    if False:\n        try:"),
        ("n-rejected-omits-duplicates", "n_rejected=len(rejects),", 'n_rejected=sum(1 for r in rejects if r["reason"] != "duplicate_key"),'),
        ("n-in-miscounted", "            n_in += 1\n", ""),
        ("reasons-not-counted", "reasons[item.reason] += 1", "pass"),
        ("kinds-not-counted", "kinds[item.kind] += 1", "pass"),
        ("sources-not-counted", 'sources[str(item.meta.get("source", ""))] += 1', "pass"),
        ("md5-wrong", "md5sum=sink.md5.hexdigest(),", "md5sum=sink.sha256.hexdigest()[:32],"),
        ("size-wrong", "filesize=sink.size,", "filesize=sink.size - 1,"),
        ("end-of-archive-dropped", "self._sink.write(end + b\"\\0\" * (-total % tarfile.RECORDSIZE))", "pass"),
        ("padding-dropped", "        if pad:\n            self._sink.write(b\"\\0\" * pad)", "        if False:\n            pass"),
        ("json-key-order", "json.dumps(sample.meta, sort_keys=True, ensure_ascii=False)", "json.dumps(sample.meta, ensure_ascii=False)"),
        ("atomic-text-in-place", "    tmp = temporary_path(path)\n    try:", "    tmp = path\n    try:"),
        ("exception-swallowed", "        tmp.unlink(missing_ok=True)\n        raise\n    os.replace(tmp, path)", "        return None\n    os.replace(tmp, path)"),
        ("extra-dropped", "extra=extra or {},", "extra={},"),
        ("fingerprint-ignored", "        if stats.fingerprint == fingerprint:\n", "        if True:\n"),
        ("old-marker-kept", "    marker.unlink(missing_ok=True)\n    path.parent.mkdir", "    path.parent.mkdir"),
    ),
    *_m("pipeline/manifest.py", _MANIFEST_T,
        ("count-guard-removed", "if n_in != kept + rejected:", "if False:"),
        ("missing-marker-accepted", "if not marker.exists() or not (dataset_dir / shard).exists():", "if False:"),
        ("missing-shard-accepted", "if not marker.exists() or not (dataset_dir / shard).exists():", "if not marker.exists():"),
        ("sha256-dropped", '"md5sum": s.md5sum, "sha256": s.sha256,', '"md5sum": s.md5sum,'),
        ("nsamples-wrong", '{"url": s.url, "nsamples": s.nsamples,', '{"url": s.url, "nsamples": s.n_in,'),
        ("rejects-not-written", "atomic_write_text(dataset_dir / REJECTS_NAME, rejects_text)", "pass"),
        ("rejects-lack-shard", 'json.dumps({"shard": s.url, **r}', "json.dumps({**r}"),
        ("reasons-not-summed", "reasons.update(s.rejected_by_reason)", "pass"),
        ("kinds-not-summed", "kinds.update(s.kinds)", "pass"),
        ("provenance-dropped", '"provenance": asdict(provenance),', '"provenance": {},'),
        ("extra-ignored", "    if extra:\n        index.update(extra)", "    if False:\n        index.update(extra)"),
        ("rejects-sha-wrong", '"rejects_sha256": hashlib.sha256(rejects_text.encode("utf-8")).hexdigest(),', '"rejects_sha256": hashlib.sha256(b"").hexdigest(),'),
        ("counts-summed-wrong", "rejected = sum(s.n_rejected for s in stats)", "rejected = sum(len(s.rejected_by_reason) for s in stats)"),
    ),
    *_m("pipeline/verify.py", _VERIFY_T,
        ("schema-not-revalidated", "                validate_sample(sample)\n", "                pass\n"),
        ("check-schema-inverted", "                if check_schema:\n                    validate_sample(sample)", "                if not check_schema:\n                    validate_sample(sample)"),
        ("counts-in-unchecked", 'if counts["in"] != counts["kept"] + counts["rejected"]:', "if False:"),
        ("counts-kept-unchecked", 'if counts["kept"] != sum(e["nsamples"] for e in index["shardlist"]):', "if False:"),
        ("rejects-lines-unchecked", 'if len(lines) != counts["rejected"]:', "if False:"),
        ("nsamples-not-recounted", 'if len(samples) != entry["nsamples"]:', "if False:"),
        ("size-unchecked", 'if size != entry["filesize"]:', "if False:"),
        ("md5-unchecked", 'if md5 != entry["md5sum"] or', "if False or"),
        ("sha-unchecked", '("sha256" in entry and sha != entry["sha256"])', "False"),
        ("missing-shard-ignored", "report.problems.append(f\"{entry['url']}: listed in", "(f\"{entry['url']}: listed in"),
        ("duplicate-keys-across-shards", "if sample.key in keys:", "if False:"),
        ("rejects-sha-unchecked", "if declared_sha is not None and hashlib.sha256(data).hexdigest() != declared_sha:", "if False:"),
        ("reasons-unchecked", "if declared is not None and dict(sorted(declared.items())) != dict(sorted(reasons.items())):", "if False:"),
        ("bad-tar-swallowed", "problems.append(f\"{path.name}: unreadable tar", "(f\"{path.name}: unreadable tar"),
        ("missing-json-ignored", "report.problems.append(f\"{entry['url']}: sample {sample.key!r} has no json member\")", "pass"),
        ("unlisted-shard-ignored", "for extra in sorted(p.name for p in root.glob(f\"*{SHARD_SUFFIX}\") if p.name not in listed):", "for extra in []:"),
        ("non-object-json", "                if not isinstance(sample.meta, dict):\n", "                if False:\n"),
        ("tar-problems-dropped", "for raw in iter_tar_samples(path, on_problem=problems.append):", "for raw in iter_tar_samples(path, on_problem=lambda p: None):"),
        ("bad-manifest-raises", "    except (OSError, ValueError) as err:\n        report.problems.append(str(err))\n        return report",
         "    except KeyboardInterrupt as err:\n        report.problems.append(str(err))\n        return report"),
    ),
    *_m("pipeline/shards.py", _VERIFY_T,
        ("non-contiguous-unchecked", "                if key in finished:\n", "                if False:\n"),
        ("repeated-member-unchecked", "            if ext in current:\n", "            if False:\n"),
        ("non-file-member-ignored", "            if not member.isfile():\n", "            if False:\n"),
        ("last-sample-dropped", "    if current is not None:\n        yield current", "    pass"),
        ("kind-unchecked", 'if index.get("__kind__") != WIDS_KIND:', "if False:"),
        ("find-not-recursive", "return sorted(root.rglob(INDEX_NAME))", "return sorted(root.glob(INDEX_NAME))"),
    ),
    *_m("pipeline/schema.py", _SCHEMA_T,
        ("unexpected-members-allowed", "        if extra:\n            raise SchemaError(", "        if False:\n            raise SchemaError("),
        ("missing-member-allowed", "if len(present) != 1:", "if len(present) > 1:"),
        ("two-images-allowed", "if len(present) != 1:", "if len(present) < 1:"),
        ("optional-not-allowed", "            allowed.update(self._expand(member))\n        extra", "            pass\n        extra"),
        ("not-strict", 'ConfigDict(extra="allow", strict=True)', 'ConfigDict(extra="allow", strict=False)'),
        ("meta-unchecked", "    schema.check_meta(key, sample.meta)\n", ""),
        ("dotted-key-allowed", 'if not key or "." in key or "/" in key:', 'if not key or "/" in key:'),
        ("unknown-kind-allowed", "    if kind not in schemas:\n        raise", "    if kind is None:\n        raise"),
        ("optional-fields-required", "return (typ | None, None) if spec.get(\"optional\") else (typ, ...)", "return (typ, ...)"),
    ),
    *_m("pipeline/provenance.py", _PROV_T,
        ("spec-hash-key-order", 'json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)',
         'json.dumps(spec, separators=(",", ":"), default=str)'),
        ("created-local-time", "created=datetime.now(timezone.utc).isoformat(timespec=\"seconds\"),", "created=datetime.now().isoformat(timespec=\"seconds\"),"),
        ("created-empty", "created=datetime.now(timezone.utc).isoformat(timespec=\"seconds\"),", 'created="",'),
    ),
    *_m("model/smartedit.py", _SMARTEDIT_T,
        ("text-drop-edge", "drop_text = (r < self.config.loss.text_drop_below)", "drop_text = (r <= self.config.loss.text_drop_below)"),
        ("image-drop-low-edge", "keep_image = ~((r >= lo) & (r < hi))", "keep_image = ~((r > lo) & (r < hi))"),
        ("image-drop-high-edge", "keep_image = ~((r >= lo) & (r < hi))", "keep_image = ~((r >= lo) & (r <= hi))"),
        ("image-never-dropped", "keep_image = ~((r >= lo) & (r < hi))", "keep_image = torch.ones_like(r, dtype=torch.bool)"),
        ("text-never-dropped", "drop_text = (r < self.config.loss.text_drop_below)", "drop_text = (r < 0)"),
        ("dropout-off-in-training", "        if self.training:\n            context, cond = self.cfg_dropout(", "        if not self.training:\n            context, cond = self.cfg_dropout("),
        ("null-is-zeros", "torch.where(drop_text, self.null_text_embeds.to(context.dtype).expand_as(context), context)",
         "torch.where(drop_text, torch.zeros_like(context), context)"),
        ("vae-train-mode", "        for frozen in (self.vae, self.text_encoder):\n            if frozen is not None:\n                frozen.eval()\n", ""),
        ("vqa-rows-in-diffusion", 'rows = is_edit.nonzero(as_tuple=True)[0]', "rows = torch.arange(is_edit.shape[0])"),
        ("lm-weight-ignored", "loss = self.config.loss.lm_loss_weight * lm_loss + self.config.loss.diffusion_loss_weight * diff",
         "loss = lm_loss + self.config.loss.diffusion_loss_weight * diff"),
        ("spatial-not-injected", "        with self.injection.active(spatial):", "        with self.injection.active(None):"),
        ("condition-latent-dropped", "sample = torch.cat([noisy_latents, condition_latents.to(noisy_latents.dtype)], dim=1)",
         "sample = torch.cat([noisy_latents, torch.zeros_like(noisy_latents)], dim=1)"),
        ("stage1-bim-trains", 'return stage == 2 and (name.startswith("bim.") or name.startswith("unet."))',
         'return name.startswith("bim.") or name.startswith("unet.")'),
        ("lora-in-stage1", "return _TOKEN_ROWS in name or (stage == 2 and _LORA in name)", "return _TOKEN_ROWS in name or _LORA in name"),
        ("strict-load-lax", "if strict and (keys.missing or keys.unexpected):", "if False:"),
    ),
    *_m("model/pipeline.py", _PIPELINE_T,
        ("spatial-text-branch-only", "spatial3 = torch.cat([spatial] * 3) if spatial is not None else None",
         "spatial3 = torch.cat([spatial, torch.zeros_like(spatial), torch.zeros_like(spatial)]) if spatial is not None else None"),
        ("spatial-dropped", "spatial3 = torch.cat([spatial] * 3) if spatial is not None else None", "spatial3 = None"),
        ("beta-start", "beta_start=0.00085", "beta_start=0.0001"),
        ("beta-end", "beta_end=0.012", "beta_end=0.02"),
        ("beta-schedule", 'beta_schedule="scaled_linear"', 'beta_schedule="linear"'),
        ("train-steps", "num_train_timesteps=1000, beta_start", "num_train_timesteps=999, beta_start"),
        ("prediction-type", 'prediction_type="epsilon"', 'prediction_type="v_prediction"'),
        ("text-guidance-default-ignored", "text_guidance_scale = defaults.text_guidance_scale if text_guidance_scale is None else text_guidance_scale",
         "text_guidance_scale = 5.0 if text_guidance_scale is None else text_guidance_scale"),
        ("image-guidance-default-ignored", "image_guidance_scale = defaults.image_guidance_scale if image_guidance_scale is None else image_guidance_scale",
         "image_guidance_scale = 1.0 if image_guidance_scale is None else image_guidance_scale"),
        ("guidance-swapped", "eps = (eps_uncond + text_guidance_scale * (eps_text - eps_image)\n                   + image_guidance_scale * (eps_image - eps_uncond))",
         "eps = (eps_uncond + image_guidance_scale * (eps_text - eps_image)\n                   + text_guidance_scale * (eps_image - eps_uncond))"),
        ("uncond-keeps-image", "cond_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])",
         "cond_latents = torch.cat([image_latents, image_latents, image_latents])"),
        ("null-in-first-branch", "contexts = torch.cat([context, null, null])", "contexts = torch.cat([null, context, null])"),
        ("init-sigma-dropped", "latents = latents * sched.init_noise_sigma", "latents = latents"),
        ("input-not-scaled", "model_input = sched.scale_model_input(torch.cat([latents] * 3), t)", "model_input = torch.cat([latents] * 3)"),
        ("generator-not-passed", "latents = sched.step(eps, t, latents, generator=generator, return_dict=False)[0]",
         "latents = sched.step(eps, t, latents, return_dict=False)[0]"),
        ("not-unscaled-on-decode", "decoded = m.vae.decode(latents.to(m.vae.dtype) / m.vae.config.scaling_factor).sample",
         "decoded = m.vae.decode(latents.to(m.vae.dtype)).sample"),
    ),
    *_m("model/bim.py", _SMARTEDIT_T,
        ("residual-scale-ignored", "text_out = text + self.config.text_residual_scale * self.text_out(text_feats)",
         "text_out = text + self.text_out(text_feats)"),
    ),
    *_m("model/config.py", _SMARTEDIT_T,
        ("residual-scale-1", "text_residual_scale: float = 0.5", "text_residual_scale: float = 1.0"),
        ("image-guidance-default", "image_guidance_scale: float = 1.5", "image_guidance_scale: float = 1.2"),
        ("text-drop-rate", "text_drop_below: float = 0.10", "text_drop_below: float = 0.05"),
        ("image-drop-band", "image_drop_range: tuple[float, float] = (0.05, 0.15)", "image_drop_range: tuple[float, float] = (0.10, 0.20)"),
    ),
    *_m("model/overlay.py", ("tests/test_pins_training.py",),
        ("class-255-kept", 'present = [c for c in classes if int(c["id"]) != COCO_UNLABELED]', "present = list(classes)"),
        ("absent-255", "- {int(c[\"id\"]) for c in present} - {COCO_UNLABELED})", "- {int(c[\"id\"]) for c in present})"),
    ),
    *_m("model/checkpoint.py", ("tests/test_pins_training.py",),
        ("written-in-place", 'tmp = final.with_name(final.name + ".tmp")\n    is_main', "tmp = final\n    is_main"),
        ("tmp-listed", "if (m := _STEP_DIR.match(p.name)) and (p / STATE).exists()]", "if (p / STATE).exists() or p.name.endswith(\".tmp\")]"),
    ),
    *_m("pipeline/synthetic/clip_direction.py", ("tests/test_pins_synthetic_models.py",),
        ("direction-sign", "d_img, d_txt = img[n:] - img[:n], txt[n:] - txt[:n]", "d_img, d_txt = img[:n] - img[n:], txt[n:] - txt[:n]"),
        ("not-normalised", "return torch.nn.functional.normalize(emb.float(), dim=-1)\n\n    def text_embeddings", "return emb.float()\n\n    def text_embeddings"),
    ),
    *_m("pipeline/synthetic/masks.py", ("tests/test_pins_synthetic_models.py",),
        ("box-xywh", "boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]", "boxes = torch.tensor([[x, y, w, h] for x, y, w, h in boxes_xywh]"),
        ("first-candidate", "best = int(np.argmax(ious))", "best = 0"),
        ("embedding-recomputed", "if image_key != self._image_key:", "if True:"),
    ),
    *_m("pipeline/compat/torchvision_ops.py", ("tests/test_pins_synthetic_models.py",),
        ("nms-ge", "suppressed |= iou > iou_threshold", "suppressed |= iou >= iou_threshold"),
        ("nms-ascending", "order = scores.argsort(descending=True)", "order = scores.argsort()"),
    ),
    *_m("flows/common.py", ("tests/test_pins_flows.py",),
        ("no-event", "        return False\n    emit_event(", "        return False\n    return True\n    emit_event("),
        ("announce-ignored", "    if not announce:\n        logger.info", "    if False:\n        logger.info"),
        ("event-renamed", 'event="shards.built",', 'event="shards.written",'),
        ("gpu-slot-on-cpu", '    if not str(device).startswith("cuda"):\n        return contextlib.nullcontext()\n', ""),
        ("gpu-slot-not-strict", "return concurrency(GPU_LIMIT, occupy=1, strict=True)", "return concurrency(GPU_LIMIT, occupy=1)"),
    ),
    *_m("prefect.yaml", ("tests/test_pins_flows.py",),
        ("trigger-event", 'expect: ["shards.built"]', 'expect: ["shards.ready"]'),
        ("trigger-bad-param", "          allow_missing_sources: true", "          allow_missing: true"),
        ("cron", 'cron: "0 3 * * *"', 'cron: "0 3 * *"'),
        ("pool", "    work_pool: {name: cpu}\n    tags: [data]\n\n  - name: convert-vqa", "    work_pool: {name: cpus}\n    tags: [data]\n\n  - name: convert-vqa"),
    ),
    *_m("model/registry.py", _REGISTRY_T,
        ("nan-kept", "        return None\n    if isinstance(value, dict):", "        return value\n    if isinstance(value, dict):"),
        ("champion-not-replaced", '                data["champion"] = champion', "                pass"),
        ("anchor-overwritten", '                if data.get("anchor") is None:', "                if True:"),
        ("history-not-kept", '            data["history"].append(entry)', "            pass"),
        ("no-lock", "            fcntl.flock(lock, fcntl.LOCK_EX)", "            pass"),
        ("refresh-any-role", 'if role not in ("champion", "anchor"):', "if False:"),
    ),
    *_m("model/evaluation/gate.py", _REGISTRY_T,
        ("verdict-better-loose", 'verdict = "better" if low > 0 else', 'verdict = "better" if high > 0 else'),
        ("worse-ignored", "            if c.verdict == \"worse\":", "            if False:"),
        ("identity-not-required", 'if not any(c.verdict == "better" for c in versus_identity):', "if False:"),
        ("edit-rate-ignored", "if rate is None or rate < policy.min_edit_rate:", "if False:"),
        ("nan-allowed", "    if nan:\n", "    if False:\n"),
        ("fidelity-only-allowed", "        if not policy.allow_fidelity_only:", "        if False:"),
        ("direction-flipped", 'sign = 1.0 if DIRECTIONS[metric] == "higher" else -1.0', "sign = 1.0"),
    ),
]


def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", ".prefect", "__pycache__", "*.pyc", ".pytest_cache", "build",
                                    "*.egg-info", "runs", "data", "outputs")
    for item in REPO.iterdir():
        if ignore(str(REPO), [item.name]):
            continue
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=ignore)
        else:
            shutil.copy2(item, target)


def _run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    env["PREFECT_HOME"] = str(root / ".prefect")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    if proc.returncode == 0:
        return "survived"
    if proc.returncode in (1, 2):  # 1: a test failed; 2: collection/import error
        return "killed"
    return f"error(rc={proc.returncode})"


def run(mutants: list[Mutant], timeout: float, verbose: bool, baseline: bool = True) -> dict[str, list[tuple[Mutant, str]]]:
    results: dict[str, list[tuple[Mutant, str]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        # A mutant only counts as killed if its tests pass on the unmutated tree (else every mutant "dies").
        broken: set[tuple[str, ...]] = set()
        if baseline:
            for tests in dict.fromkeys(m.tests for m in mutants):
                if all((root / t.split("::")[0]).exists() for t in tests) and _run_tests(root, tests, timeout) != "survived":
                    broken.add(tests)
                    print(f"  baseline FAILS: {' '.join(tests)}", file=sys.stderr, flush=True)
        for mutant in mutants:
            path = root / mutant.module
            text = path.read_text() if path.exists() else ""
            if mutant.tests in broken:
                outcome = "baseline-fails"
            elif text.count(mutant.original) != 1:
                outcome = "n/a"
            else:
                missing = [t for t in mutant.tests if not (root / t.split("::")[0]).exists()]
                if missing:
                    outcome = "n/a"
                else:
                    path.write_text(text.replace(mutant.original, mutant.replacement))
                    start = time.monotonic()
                    try:
                        outcome = _run_tests(root, mutant.tests, timeout)
                    finally:
                        path.write_text(text)
                    if verbose:
                        print(f"  {time.monotonic() - start:5.1f}s", end="", file=sys.stderr)
            results[mutant.module].append((mutant, outcome))
            if verbose:
                print(f"  {outcome:9s} {mutant.module}::{mutant.name}", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, list[tuple[Mutant, str]]]) -> str:
    lines = ["| module | mutants | killed | survived | n/a | kill rate | survivors |", "|---|---|---|---|---|---|---|"]
    for module, rows in results.items():
        killed = sum(o in ("killed", "timeout") for _, o in rows)
        survived = [m.name for m, o in rows if o == "survived"]
        na = sum(o in ("n/a", "baseline-fails") for _, o in rows)
        applicable = len(rows) - na
        rate = f"{100 * killed / applicable:.0f} %" if applicable else "–"
        lines.append(f"| {module} | {len(rows)} | {killed} | {len(survived)} | {na} | {rate} | {', '.join(survived) or '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="only mutants of this file (repeatable)")
    parser.add_argument("--name", action="append", help="only mutants with this name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    parser.add_argument("--verbose", action="store_true", help="one line per mutant on stderr")
    parser.add_argument("--no-baseline", action="store_true", help="skip the check that the tests pass unmutated")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if (not args.module or m.module in args.module) and (not args.name or m.name in args.name)]
    if args.list:
        for m in chosen:
            print(f"{m.module}::{m.name}  ({' '.join(m.tests)})")
        return 0
    if not chosen:
        print("error: no mutant matches --module/--name; see --list", file=sys.stderr)
        return 1
    results = run(chosen, args.timeout, args.verbose, baseline=not args.no_baseline)
    print(table(results))
    survived = sum(o == "survived" for rows in results.values() for _, o in rows)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
