"""pipeline.reading: members decoded by kind, and the README's copy-paste reading example, run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_train_data import make_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["edit_pair", "seg_labelmap", "referring_mask", "reasoning_seg", "vqa"])
def test_members_decode_by_kind(kind):
    from pipeline.reading import decode_sample

    raw = make_sample(kind, 3, np.random.default_rng(0))
    sample = decode_sample(raw)
    assert sample["__key__"] == raw["__key__"] and sample["json"]["kind"] == kind
    for name in raw:
        if name.startswith("__") or name == "json":
            continue
        original = np.asarray(Image.open(io.BytesIO(raw[name])))
        if name in ("png", "src.png", "tgt.png"):
            assert sample[name].mode == "RGB" and np.asarray(sample[name]).shape == original.shape[:2] + (3,)
        else:  # masks and label maps keep one channel and their exact values (255 = unlabeled stays 255)
            assert sample[name].dtype == np.uint8 and sample[name].ndim == 2
            np.testing.assert_array_equal(sample[name], original)


def test_an_rgb_mask_is_refused_with_the_member_named():
    from pipeline.reading import decode_sample

    raw = make_sample("referring_mask", 0, np.random.default_rng(0))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    raw["mask.png"] = buf.getvalue()
    with pytest.raises(ValueError, match=r"referring_mask-00000: member mask.png .*single-channel"):
        decode_sample(raw)


def test_readers_yield_decoded_samples_in_order(tmp_path):
    from pipeline.reading import webdataset_reader, wids_reader
    from test_shards import build

    build(tmp_path / "d", n=6)
    streamed = [s["__key__"] for s in webdataset_reader(tmp_path / "d")]
    indexed = wids_reader(tmp_path / "d")
    assert len(streamed) == len(indexed) == 6
    assert [indexed[i]["__key__"] for i in range(6)] == streamed
    assert isinstance(indexed[0]["json"], dict)


def test_readme_reading_example_runs_as_written(tmp_path, monkeypatch, samples_seed0):
    from pipeline.convert import convert
    from pipeline.sources import get_reader

    reader = get_reader("magicbrush", samples_seed0.root / "magicbrush", "train")
    index = convert(reader, tmp_path / ".demo" / "shards" / "magicbrush" / "train", shard_size=4)
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- reading-example[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10, "the README promises a 10-line example"

    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    first, second = out.getvalue().splitlines()
    assert first.startswith("RGB RGB (") and ") " in first  # masks: (H, W) arrays
    n = sum(s["nsamples"] for s in index["shardlist"])
    assert second.split()[0] == str(n) and second.endswith(" uint8")


def test_shards_verify_json(tmp_path, capsys):
    import json

    from smartedit_cli.main import main
    from test_shards import build

    build(tmp_path / "a", n=4)
    build(tmp_path / "b", n=4)
    assert main(["shards", "verify", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and [d["samples"] for d in report["datasets"]] == [4, 4]
    shard = next((tmp_path / "b").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-1024])
    assert main(["shards", "verify", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["datasets"][0]["ok"] and not report["datasets"][1]["ok"]
    assert report["datasets"][1]["problems"]
