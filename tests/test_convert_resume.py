"""Resume after a kill, worker-count independence, the CLI, and the source specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from convert_fixtures import build_sources
from pipeline.convert import convert
from pipeline.manifest import load_manifest
from pipeline.sources import SOURCES, get_reader, reader_class
from pipeline.sources.spec import SourceSpec, all_spec_names, load_spec, spec_path


def _shas(dataset_dir: Path) -> dict[str, str]:
    return {s["url"]: s["sha256"] for s in load_manifest(dataset_dir)["shardlist"]}


class _Killed(BaseException):
    """Stands in for SIGKILL: a BaseException the driver does not quarantine."""


class _DyingReader:
    """Wraps a reader and dies at record ``die_at``, as a killed process would."""

    def __init__(self, inner, die_at: int):
        self.inner, self.die_at = inner, die_at

    def __getattr__(self, name):  # everything else (spec, records, check_inputs, code_module, ...) is the reader's
        return getattr(self.inner, name)

    def read(self, index, record):
        if index == self.die_at:
            raise _Killed()
        return self.inner.read(index, record)


@pytest.mark.parametrize("source,split", [("cocostuff", "train2017"), ("refcoco", "train")])
def test_resume_after_kill_gives_the_same_shards(tmp_path, source, split):
    fx = build_sources(tmp_path / "src")
    reader = get_reader(source, fx.roots[source], split, **fx.options.get(source, {}))
    clean = convert(reader, tmp_path / "clean", shard_size=2)
    with pytest.raises(_Killed):
        convert(_DyingReader(reader, die_at=5), tmp_path / "resumed", shard_size=2)
    killed = tmp_path / "resumed" / f"{load_manifest(tmp_path / 'clean')['name']}-000002.tar"
    assert not killed.exists(), "the killed shard is left unfinished, not renamed"
    assert not killed.with_name(killed.name.replace(".tar", ".stats.json")).exists()
    resumed = convert(reader, tmp_path / "resumed", shard_size=2)
    assert _shas(tmp_path / "resumed") == _shas(tmp_path / "clean")
    assert resumed["counts"] == clean["counts"]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "resumed").iterdir())


def test_two_workers_write_the_same_bytes(tmp_path):
    fx = build_sources(tmp_path / "src")
    reader = get_reader("reasonseg", fx.roots["reasonseg"], "train")
    convert(reader, tmp_path / "one", shard_size=2, workers=1)
    convert(reader, tmp_path / "two", shard_size=2, workers=2)
    assert _shas(tmp_path / "one") == _shas(tmp_path / "two")


def test_cli_converts_every_split(tmp_path, capsys):
    from smartedit_cli.main import main

    fx = build_sources(tmp_path / "src")
    rc = main(["convert", "refcocog", "--root", str(fx.roots["refcocog"]), "--out", str(tmp_path / "out"),
               "--images", fx.options["refcocog"]["images"], "--shard-size", "3"])
    assert rc == 0
    for split in ("train", "val", "test"):
        index = load_manifest(tmp_path / "out" / "refcocog" / split)
        assert index["counts"]["in"] == fx.counts["refcocog"][split]
    assert "refcocog/train: 6 records → 3 samples" in capsys.readouterr().out
    rc = main(["convert", "magicbrush", "--root", str(fx.roots["magicbrush"]), "--out", str(tmp_path / "out"),
               "--lisa-dash-remap"])
    assert rc == 1  # an option that does not apply is an error, not silently ignored


def test_every_spec_validates_and_matches_its_reader():
    assert sorted(all_spec_names()) == sorted(SOURCES)
    for name in SOURCES:
        spec = load_spec(name)
        assert reader_class(name).source == name
        raw = yaml.safe_load(spec_path(name).read_text())
        assert SourceSpec.model_validate(raw) == spec
        assert spec.citation.strip().startswith("@") and spec.expected_counts
    refcoco = load_spec("refcoco").expected_counts
    splits = ("train", "val", "testA", "testB")
    for unit in ("refs", "expressions", "images"):
        assert sum(refcoco[f"unc/{s}"][unit] for s in splits) == refcoco["unc/total"][unit]
    refcocog = load_spec("refcocog").expected_counts
    for unit in ("refs", "expressions", "images"):
        assert sum(refcocog[f"umd/{s}"][unit] for s in ("train", "val", "test")) == refcocog["umd/total"][unit]


def test_spec_validation_rejects_bad_files():
    raw = yaml.safe_load(spec_path("reasonseg").read_text())
    with pytest.raises(ValueError, match="kind"):
        SourceSpec.model_validate({**raw, "kind": "segmentation"})
    with pytest.raises(ValueError, match="unknown splits"):
        SourceSpec.model_validate({**raw, "expected_counts": {"training": {"images": 1}}})
    with pytest.raises(ValueError):
        SourceSpec.model_validate({**raw, "licence_typo": "x"})


def test_unknown_split_and_option_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'train2014'"):
        get_reader("cocostuff", tmp_path, "train2014")
    with pytest.raises(ValueError, match="options accepted"):
        get_reader("magicbrush", tmp_path, "train", images="x")
    with pytest.raises(ValueError, match="unknown source"):
        get_reader("coco", tmp_path, "train")
