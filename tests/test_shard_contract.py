"""One shard contract and one vocabulary: every reader takes names, kinds, extensions and decoding from them."""

from __future__ import annotations

import ast
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import shards, vocabulary
from pipeline.records import Sample
from pipeline.writer import write_shard

REPO = Path(__file__).resolve().parents[1]


def test_image_extensions_and_kinds_come_from_the_schema_file():
    doc = yaml.safe_load((REPO / "data_specs" / "schemas.yaml").read_text())
    assert shards.IMAGE_EXTENSIONS == tuple(doc["image_extensions"])
    assert shards.SAMPLE_KINDS == tuple(doc["kinds"])
    assert shards.MASK_MEMBERS == ("ignore.png", "mask.png", "seg.png")


def _literal_tuples(path: Path) -> list[tuple]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts and all(isinstance(e, ast.Constant) for e in node.elts):
            out.append(tuple(e.value for e in node.elts))
    return out


def test_no_product_module_spells_out_the_shared_lists_again():
    """Image extensions, Reason-Edit categories and source names are written once (pipeline/shards.py's schema,
    pipeline/vocabulary.py); a second literal copy in product code is how the copies drifted apart before."""
    shared = {
        "image extensions": set(shards.IMAGE_EXTENSIONS),
        "Reason-Edit categories": set(vocabulary.REASON_EDIT_UNDERSTANDING),
        "source names": set(vocabulary.SOURCE_GROUPS["segmentation"]),
    }
    offenders = []
    for directory in ("pipeline", "model", "flows"):
        for path in sorted((REPO / directory).rglob("*.py")):
            if path.name == "vocabulary.py" or "samples" in path.relative_to(REPO).parts[:2]:
                continue
            for values in _literal_tuples(path):
                for what, names in shared.items():
                    if len(values) >= 3 and set(values) >= names:
                        offenders.append(f"{path.relative_to(REPO)}: {what} {values}")
    assert not offenders, offenders


def test_vocabulary_matches_readers_specs_flows_and_sample_data():
    from flows.convert import EDIT, SEGMENTATION, VQA
    from model.evaluation.reason_edit import CATEGORIES
    from pipeline.samples.categories import coco_categories_json
    from pipeline.samples.reason_edit import CATEGORIES as SAMPLE_CATEGORIES
    from pipeline.sources import SOURCES, reader_class
    from pipeline.sources.cocostuff import BUILTIN_LABELS
    from pipeline.sources.spec import all_spec_names

    assert SOURCES == vocabulary.SOURCES == SEGMENTATION + VQA + EDIT
    assert sorted(all_spec_names()) == sorted(vocabulary.SOURCES)
    assert all(reader_class(s).source == s for s in vocabulary.SOURCES)
    assert CATEGORIES == SAMPLE_CATEGORIES == vocabulary.REASON_EDIT_CATEGORIES
    assert len(BUILTIN_LABELS) == 182 and BUILTIN_LABELS[0] == "person" and BUILTIN_LABELS[181] == "wood"
    assert [c["name"] for c in coco_categories_json()] == [n for _, n, _ in vocabulary.COCO_CATEGORIES]
    assert len(vocabulary.COCO_CATEGORIES) == 80


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_iterate_and_decode_samples_of_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    mask = np.zeros((12, 16), np.uint8)
    mask[2:5, 3:9] = 255
    meta = {"kind": "referring_mask", "source": "refcoco", "split": "train", "source_id": "1", "sentences": ["a"],
            "no_target": False}
    items = [Sample(f"k-{i}", dict(meta), {"png": _png(image), "mask.png": _png(mask)}) for i in range(3)]
    stats = write_shard(tmp_path / "d-000000.tar", items)
    assert stats.nsamples == 3
    raws = list(shards.iter_samples(tmp_path / "d-000000.tar"))
    assert [r["__key__"] for r in raws] == ["k-0", "k-1", "k-2"]
    decoded = shards.decode_sample(raws[0])
    assert decoded["json"]["kind"] == "referring_mask"
    np.testing.assert_array_equal(np.asarray(decoded["png"]), image)
    np.testing.assert_array_equal(decoded["mask.png"], mask)
    with pytest.raises(ValueError, match="member mask.png"):
        shards.decode_sample({**raws[0], "mask.png": _png(np.stack([mask] * 3, -1))})


def test_manifest_errors_are_one_line_naming_the_field(tmp_path):
    index = tmp_path / "shardindex.json"
    for text, field in (("[]", "expected a JSON object"), ('{"__kind__": "wids-shard-index-v1"}', "'shardlist'"),
                        ('{"__kind__": "wids-shard-index-v1", "shardlist": [{"url": "../x.tar", "nsamples": 1, '
                         '"filesize": 1, "md5sum": "x"}]}', "outside the dataset"),
                        ('{"__kind__": "wids-shard-index-v1", "shardlist": [{"url": "a.tar"}]}', "'nsamples'"),
                        ("{not json", "not valid JSON")):
        index.write_text(text)
        with pytest.raises(shards.ManifestError, match=field) as err:
            shards.load_manifest(index)
        assert "\n" not in str(err.value)


def test_data_specs_ship_with_a_regular_install(tmp_path):
    """`pip install .` (not editable): data_specs is package data and its one accessor finds every spec."""
    project = tmp_path / "project"  # a copy, so the build leaves nothing in the checkout
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    for name in ("flows", "pipeline", "model", "data_specs"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile", "-q",
                    "--target", str(target), str(project)], check=True, capture_output=True, timeout=300)
    code = (
        "import data_specs, pipeline.schema, pipeline.sources.spec as spec, model.mixture as mixture\n"
        "assert data_specs.__file__.startswith(%r), data_specs.__file__\n"
        "assert len(pipeline.schema.load_schemas()) == 6\n"
        "assert sorted(spec.all_spec_names()) == sorted(__import__('pipeline.vocabulary').vocabulary.SOURCES)\n"
        "assert mixture.load_mixture_spec().name\n"
        "for part in ('colours.yaml', 'knowledge.yaml', 'reason_edit_paper_table1.yaml'):\n"
        "    assert data_specs.spec_path(part).is_file(), part\n"
        "assert data_specs.spec_path('instruction_templates', 'seg_overlay.yaml').is_file()\n"
        "print('ok')\n" % str(target)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
