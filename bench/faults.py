"""Fault injection for the converters: kill -9 at random points, two concurrent writers, reruns with changed options.

    python bench/faults.py [--trials 20] [--records 60] [--shard-size 4] [--workers 2] [--seed 0]

On a generated RefCOCO layout (tests/convert_fixtures.py style: real pickles, instances.json, JPEGs, a few
bad records), each scenario ends with `verify` on the dataset and a comparison of its sample set (keys and
sha256 of every member) with an uninterrupted run into a fresh directory:
  kill    a conversion (``--workers N`` subprocess) is SIGKILLed after a random delay, then rerun to completion;
  race    two conversions into the same output start together; one must fail at once naming the holder
          (exit 1, one line), the other completes;
  rerun   a finished dataset is converted again with another --shard-size and another --max-pixels: refused
          (exit 1) without --overwrite, rebuilt with it, and the result equals a fresh run with those options.
Prints one line per trial and the totals, which BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from convert_fixtures import jpeg  # noqa: E402
from pipeline.shards import iter_samples  # noqa: E402
from pipeline.verify import verify_dataset  # noqa: E402


def make_source(root: Path, n: int, seed: int) -> tuple[Path, Path]:
    """A RefCOCO layout with ``n`` train refs (every 10th one bad), images 48x36."""
    rng = np.random.default_rng(seed)
    images = root / "coco" / "train2017"
    images.mkdir(parents=True)
    d = root / "refer" / "refcoco"
    d.mkdir(parents=True)
    coco_images, anns, refs = [], [], []
    for i in range(1, n + 1):
        w, h = 48, 36
        (images / f"{i:012d}.jpg").write_bytes(jpeg(w, h, i))
        coco_images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
        x0, y0 = rng.uniform(0, 20, 2)
        poly = [x0, y0, x0 + 20, y0, x0 + 20, y0 + 12, x0, y0 + 12]
        if i % 10 == 0:
            poly = [x + 200 for x in poly]  # outside the image: a reject
        anns.append({"id": 1000 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": [poly]})
        refs.append({"ref_id": i, "ann_id": 1000 + i, "image_id": i, "category_id": 1, "split": "train",
                     "file_name": f"x_{i}.jpg", "sent_ids": [i], "sentences": [{"sent": f"thing {i}", "sent_id": i}]})
    (d / "instances.json").write_text(json.dumps({"images": coco_images, "annotations": anns,
                                                  "categories": [{"id": 1, "name": "thing"}]}))
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root / "refer", images


def command(refer: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from smartedit_cli.main import main; sys.exit(main(sys.argv[1:]))",
            "convert", "refcoco", "--root", str(refer), "--images", str(images), "--split", "train", "--out", str(out),
            *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def sample_set(dataset: Path) -> dict[str, str]:
    """key → sha256 over the sample's members (names and bytes)."""
    out = {}
    for raw in iter_samples(dataset):
        h = hashlib.sha256()
        for name in sorted(k for k in raw if not k.startswith("__")):
            h.update(name.encode() + b"\0" + raw[name])
        out[raw["__key__"]] = h.hexdigest()
    return out


def check(dataset: Path, reference: dict[str, str]) -> tuple[bool, str]:
    report = verify_dataset(dataset)
    if not report.ok:
        return False, f"verify: {report.problems[:2]}"
    got = sample_set(dataset)
    if got != reference:
        return False, f"sample set differs ({len(got)} vs {len(reference)} samples)"
    return True, f"{len(got)} samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    try:
        refer, images = make_source(scratch / "src", args.records, args.seed)
        base = ["--shard-size", str(args.shard_size), "--workers", str(args.workers)]
        subprocess.run(command(refer, images, scratch / "clean", *base), check=True, env=env(), capture_output=True)
        dataset = Path("refcoco") / "train"
        reference = sample_set(scratch / "clean" / dataset)
        t0 = time.perf_counter()
        subprocess.run(command(refer, images, scratch / "timing", *base), check=True, env=env(), capture_output=True)
        full = time.perf_counter() - t0
        print(f"reference: {len(reference)} samples, uninterrupted run {full:.2f} s")

        results = {"kill": [0, 0], "race": [0, 0], "rerun": [0, 0]}
        for trial in range(args.trials):
            out = scratch / f"kill{trial}"
            proc = subprocess.Popen(command(refer, images, out, *base), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            delay = rnd.uniform(0.05, full)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.2)  # PR_SET_PDEATHSIG: the pool workers follow their parent
            rerun = subprocess.run(command(refer, images, out, *base), env=env(), capture_output=True, text=True)
            ok, detail = (rerun.returncode == 0, rerun.stderr.strip()[-200:])
            if ok:
                ok, detail = check(out / dataset, reference)
            results["kill"][0 if ok else 1] += 1
            print(f"kill  trial {trial:2d}: SIGKILL after {delay:5.2f} s, rerun → {'OK  ' if ok else 'FAIL'} {detail}")
            shutil.rmtree(out, ignore_errors=True)

        for trial in range(max(1, args.trials // 4)):
            out = scratch / f"race{trial}"
            procs = [subprocess.Popen(command(refer, images, out, *base, "--max-pixels", str(10**6 + k)), env=env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
            outs = [p.communicate() for p in procs]
            codes = sorted(p.returncode for p in procs)
            loser = next((o[1] for p, o in zip(procs, outs) if p.returncode == 1), "")
            ok = codes == [0, 1] and "is writing this dataset" in loser and len(loser.strip().splitlines()) == 1
            if codes == [0, 0]:  # the first finished before the second started: still must be one consistent dataset
                ok = True
            winner = next(k for k, p in enumerate(procs) if p.returncode == 0)
            fresh = scratch / f"race{trial}-fresh"
            subprocess.run(command(refer, images, fresh, *base, "--max-pixels", str(10**6 + winner)), check=True,
                           env=env(), capture_output=True)
            good, detail = check(out / dataset, sample_set(fresh / dataset)) if ok else (False, loser.strip()[-200:])
            ok = ok and good and json.loads((out / dataset / "shardindex.json").read_text())["provenance"]["spec"]["options"][
                "max_pixels"] == 10**6 + winner
            results["race"][0 if ok else 1] += 1
            print(f"race  trial {trial:2d}: exit codes {codes} → {'OK  ' if ok else 'FAIL'} {detail}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(fresh, ignore_errors=True)

        for trial, changed in enumerate((["--shard-size", "7"], ["--max-pixels", "1000"], ["--shard-size", "3", "--max-pixels", "2000"])):
            out = scratch / f"rerun{trial}"
            subprocess.run(command(refer, images, out, *base), check=True, env=env(), capture_output=True)
            options = [*base, *changed]  # later flags win in argparse
            refused = subprocess.run(command(refer, images, out, *options), env=env(), capture_output=True, text=True)
            rebuilt = subprocess.run(command(refer, images, out, *options, "--overwrite"), env=env(), capture_output=True, text=True)
            fresh = scratch / f"rerun{trial}-fresh"
            subprocess.run(command(refer, images, fresh, *options), check=True, env=env(), capture_output=True)
            ok = (refused.returncode == 1 and "--overwrite" in refused.stderr and rebuilt.returncode == 0)
            good, detail = check(out / dataset, sample_set(fresh / dataset)) if ok else (False, refused.stderr[-200:])
            index = json.loads((out / dataset / "shardindex.json").read_text())
            fresh_index = json.loads((fresh / dataset / "shardindex.json").read_text())
            same = [e["sha256"] for e in index["shardlist"]] == [e["sha256"] for e in fresh_index["shardlist"]]
            ok = ok and good and same and index["counts"] == fresh_index["counts"]
            results["rerun"][0 if ok else 1] += 1
            print(f"rerun trial {trial:2d}: {' '.join(changed)}: refused then --overwrite → {'OK  ' if ok else 'FAIL'} {detail}")
        print("totals: " + ", ".join(f"{k} {v[0]} passed / {v[1]} failed" for k, v in results.items()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
