"""Data integrity across reruns, concurrent runs and hostile input (issue 10): each case reproduces a defect."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert_fixtures import build_sources, jpeg, png
from pipeline.convert import ConversionRefused, convert
from pipeline.locking import DatasetLock, DatasetLockedError
from pipeline.sources import convert_source, get_reader
from pipeline.sources.base import SourceError, clear_cache
from pipeline.sources.images import RejectError, decode_binary_mask, probe_image, read_regular_file
from pipeline.sources.safe_pickle import UnsafePickleError, safe_loads
from pipeline.verify import verify_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fx(tmp_path):
    clear_cache()
    yield build_sources(tmp_path / "src")
    clear_cache()


def _reader(fx, source="refcoco", split="train", **options):
    return get_reader(source, fx.roots[source], split, **{**fx.options.get(source, {}), **options})


def _rejects(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "rejects.jsonl").read_text().splitlines()]


# ---- reruns with other settings -------------------------------------------------------------------------
def test_rerun_with_another_shard_size_refuses_then_overwrite_rebuilds(fx, tmp_path):
    out = tmp_path / "out"
    first = convert(_reader(fx), out, shard_size=2)
    assert len(first["shardlist"]) == 3
    with pytest.raises(ConversionRefused, match=r"shard_size 2 → 4.*--overwrite"):
        convert(_reader(fx), out, shard_size=4)
    index = convert(_reader(fx), out, shard_size=4, overwrite=True)
    assert len(index["shardlist"]) == 2 and index["counts"]["in"] == first["counts"]["in"] == 6
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(e["url"] for e in index["shardlist"])
    assert verify_dataset(out).ok, verify_dataset(out).problems


def test_rerun_with_another_max_pixels_never_keeps_old_shards(fx, tmp_path):
    out = tmp_path / "out"
    convert(_reader(fx), out, shard_size=2)
    with pytest.raises(ConversionRefused, match=r"options\.max_pixels"):
        convert(_reader(fx, max_pixels=1000), out, shard_size=2)
    index = convert(_reader(fx, max_pixels=1000), out, shard_size=2, overwrite=True)
    assert index["provenance"]["spec"]["options"]["max_pixels"] == 1000
    assert index["counts"]["rejected_by_reason"].get("image_too_large", 0) >= 2  # the shards really were rebuilt
    assert verify_dataset(out).ok


def test_a_stale_tar_from_another_plan_is_refused_or_removed(fx, tmp_path):
    out = tmp_path / "out"
    convert(_reader(fx), out, shard_size=2)
    (out / "refcoco-train-000099.tar").write_bytes(b"stale")
    with pytest.raises(ConversionRefused, match="000099.tar"):
        convert(_reader(fx), out, shard_size=2)
    convert(_reader(fx), out, shard_size=2, overwrite=True)
    assert not (out / "refcoco-train-000099.tar").exists()


def test_a_change_in_reader_or_writer_code_is_a_change_of_settings(fx, tmp_path, monkeypatch):
    import pipeline.convert as driver
    from pipeline.fingerprint import code_fingerprint

    assert code_fingerprint("pipeline.sources.refcoco") != code_fingerprint("pipeline.sources.cocostuff")
    out = tmp_path / "out"
    convert(_reader(fx), out, shard_size=2)
    monkeypatch.setattr(driver, "code_fingerprint", lambda module: "edited-" + module)
    with pytest.raises(ConversionRefused, match=r"code '[0-9a-f]{8}.*' → 'edited-pipeline\.sources\.refcoco'"):
        convert(_reader(fx), out, shard_size=2)


# ---- concurrent runs --------------------------------------------------------------------------------------
def test_second_run_into_a_locked_dataset_fails_at_once_naming_the_holder(fx, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from pipeline.locking import DatasetLock\n"
        "with DatasetLock(%r):\n    print('held', flush=True); time.sleep(60)\n") % (str(REPO), str(out))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(DatasetLockedError, match=rf"pid {holder.pid}\b"):
            convert(_reader(fx), out, shard_size=2)
        assert time.monotonic() - start < 30  # "at once": no waiting on the holder
        assert not list(out.glob("*.tar"))
    finally:
        holder.kill()
        holder.wait()
    assert convert(_reader(fx), out, shard_size=2)["counts"]["in"] == 6  # the lock died with its holder


def test_cli_second_run_is_one_line_and_exit_1(fx, tmp_path):
    out = tmp_path / "out"
    with DatasetLock(out / "refcoco" / "train"):
        code = subprocess.run([sys.executable, "-c", "import sys; from smartedit_cli.main import main; sys.exit(main(sys.argv[1:]))",
                               "convert", "refcoco", "--root", str(fx.roots["refcoco"]), "--split", "train",
                               "--images", fx.options["refcoco"]["images"], "--out", str(out)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert code.returncode == 1
    assert code.stderr.strip().count("\n") == 0 and f"pid {os.getpid()}" in code.stderr


def test_temporary_names_are_unique():
    from pipeline.writer import temporary_path

    names = {temporary_path(Path("/x/a.tar")).name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(f"a.tar.{os.getpid()}-") and n.endswith(".tmp") for n in names)


# ---- hostile polygons -----------------------------------------------------------------------------------
_NAN_POLYGON = """
import resource, sys
sys.path.insert(0, {repo!r})
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from pipeline.sources.refcoco import annotation_mask
from pipeline.sources.images import RejectError
try:
    annotation_mask({{"id": 1, "segmentation": [[1.0, 1.0, float("nan"), 5.0, 8.0, 8.0]]}}, 10, 10)
except RejectError as err:
    print(err.reason)
"""


def test_nan_polygon_vertex_is_rejected_before_pycocotools():
    out = subprocess.run([sys.executable, "-c", _NAN_POLYGON.format(repo=str(REPO))], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "polygon_invalid", out.stderr[-500:]


def test_nan_polygon_is_rejected_in_every_reader(fx, tmp_path):
    refer = fx.roots["refcoco"] / "refcoco" / "instances.json"
    doc = json.loads(refer.read_text())
    doc["annotations"][0]["segmentation"][0][1] = float("nan")
    refer.write_text(json.dumps(doc))  # json writes NaN, and json.loads reads it back: exactly the attack
    index = convert(_reader(fx), tmp_path / "refcoco", shard_size=10)
    assert index["counts"]["rejected_by_reason"]["polygon_invalid"] == 1
    stem = fx.roots["reasonseg"] / "train" / "plain.json"
    ann = json.loads(stem.read_text())
    ann["shapes"][0]["points"][1][0] = float("nan")
    stem.write_text(json.dumps(ann))
    index = convert(_reader(fx, "reasonseg"), tmp_path / "reasonseg", shard_size=10)
    rejects = {r["location"].rsplit("/", 1)[-1]: r["reason"] for r in _rejects(tmp_path / "reasonseg")}
    assert rejects["plain.jpg"] == "polygon_invalid"


# ---- one orientation rule: converter → training batch → synthetic builder -----------------------------
def _rotated_png(displayed: np.ndarray) -> bytes:
    """PNG whose stored pixels are ``displayed`` turned 90°, with EXIF Orientation 6 turning them back."""
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif)
    return buf.getvalue()


def test_exif_rotated_samples_line_up_with_their_masks_in_the_training_batch(tmp_path):
    from model.data import MixtureDataset, make_dataloader
    from model.mixture import uniform_mixture
    from pipeline.manifest import finalize_dataset
    from pipeline.provenance import Provenance
    from pipeline.records import Sample
    from pipeline.sources.images import encode_mask_png
    from pipeline.writer import write_shard

    h, w = 32, 48  # displayed: landscape; stored: portrait
    displayed = np.full((h, w, 3), 230, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[4:28, 2:20] = True  # a dark object on the left of the displayed image
    displayed[mask] = 20
    data = _rotated_png(displayed)
    stored = probe_image(data, "rotated.png")  # what the converters record
    assert stored.exif_orientation == 6 and stored.size == (w, h)
    meta = {"kind": "referring_mask", "source": "refcoco", "split": "train", "source_id": "1",
            "sentences": ["the dark thing"], "no_target": False, "width": w, "height": h, "exif_orientation": 6}
    write_shard(tmp_path / "d-000000.tar", [Sample(f"k-{i}", dict(meta), {"png": data, "mask.png": encode_mask_png(mask)})
                                             for i in range(2)])
    finalize_dataset(tmp_path, name="d", shard_names=["d-000000.tar"], provenance=Provenance.now("refcoco", {}))

    size = 32
    dataset = MixtureDataset(uniform_mixture([tmp_path]),
                             lambda ex: {"source": np.asarray(ex.source), "target": np.asarray(ex.target)}, resolution=size)
    batch = next(iter(make_dataloader(dataset, batch_size=2)))
    source = batch["source"].numpy()
    # Training crops the centre square: the object fills the left rows/columns of the mask resized the same way.
    from model.data import _mask_resized

    small = _mask_resized((mask * 255).astype(np.uint8), size) > 127
    assert small.any() and (~small).any()
    for img in source:
        gray = img.mean(-1)
        assert gray[small].mean() < 60 and gray[~small].mean() > 180  # image and mask agree


def test_synthetic_builder_reads_rotated_shards_in_the_displayed_orientation(tmp_path):
    from pipeline.manifest import finalize_dataset
    from pipeline.provenance import Provenance
    from pipeline.records import Sample
    from pipeline.sources.images import encode_mask_png
    from pipeline.synthetic.scene import read_rgb
    from pipeline.synthetic.shard_scenes import materialise_shard_scenes
    from pipeline.writer import write_shard

    h, w = 24, 40
    displayed = np.full((h, w, 3), 230, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[3:20, 25:37] = True
    displayed[mask] = 20
    meta = {"kind": "referring_mask", "source": "refcoco", "split": "train", "source_id": "1", "sentences": ["x"],
            "no_target": False, "image_id": 5, "ann_ids": [7], "category_id": 1}
    write_shard(tmp_path / "ds" / "d-000000.tar",
                [Sample("k-0", meta, {"png": _rotated_png(displayed), "mask.png": encode_mask_png(mask)})])
    finalize_dataset(tmp_path / "ds", name="d", shard_names=["d-000000.tar"], provenance=Provenance.now("refcoco", {}))
    splits, _ = materialise_shard_scenes(tmp_path / "ds", tmp_path / "scenes")
    image = read_rgb(next(Path(splits[0].images).iterdir()))
    assert image.shape[:2] == (h, w)
    assert image.mean(-1)[mask].mean() < 60 and image.mean(-1)[~mask].mean() > 180


# ---- verify catches what it claims to ------------------------------------------------------------------
@pytest.fixture
def good(fx, tmp_path):
    out = tmp_path / "good"
    convert(_reader(fx), out, shard_size=2)
    assert verify_dataset(out).ok
    return out


def _one_line_failure(path: Path, needle: str) -> None:
    report = verify_dataset(path)
    assert not report.ok
    assert any(needle in p for p in report.problems), report.problems
    assert all("\n" not in p for p in report.problems)
    out = subprocess.run([sys.executable, "-c", "import sys; from smartedit_cli.main import main; sys.exit(main(sys.argv[1:]))",
                          "shards", "verify", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout


def test_verify_flags_an_unlisted_tar(good):
    (good / "refcoco-train-000009.tar").write_bytes((good / "refcoco-train-000000.tar").read_bytes())
    _one_line_failure(good, "does not list")


def test_verify_flags_counts_that_disagree_with_rejects_and_samples(good):
    index = json.loads((good / "shardindex.json").read_text())
    reasons = index["counts"]["rejected_by_reason"]
    first = sorted(reasons)[0]
    reasons["made_up"] = reasons.pop(first)
    index["counts"]["kinds"] = {"vqa": index["counts"]["kept"]}
    (good / "shardindex.json").write_text(json.dumps(index))
    _one_line_failure(good, "counts.kinds")
    _one_line_failure(good, "counts.rejected_by_reason")


def test_verify_flags_a_rejects_file_edited_at_the_same_line_count(good):
    lines = (good / "rejects.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace("empty_text", "empty_tixt").replace("polygon", "pulygon").replace("unknown", "unknewn")
    (good / "rejects.jsonl").write_text("\n".join(lines) + "\n")
    _one_line_failure(good, "rejects_sha256")


def _rewrite_shard(dataset: Path, members: list[tuple[str, bytes]]) -> None:
    """Replace the first shard with ``members`` and update its manifest entry so only the names are wrong."""
    import hashlib

    shard = dataset / "refcoco-train-000000.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    index = json.loads((dataset / "shardindex.json").read_text())
    entry = index["shardlist"][0]
    entry.update(filesize=len(buf.getvalue()), md5sum=hashlib.md5(buf.getvalue()).hexdigest(),
                 sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    (dataset / "shardindex.json").write_text(json.dumps(index))


def test_verify_flags_member_names_with_dotdot(good):
    with tarfile.open(good / "refcoco-train-000000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    members = [("../" + n if i == 0 else n, d) for i, (n, d) in enumerate(members)]
    _rewrite_shard(good, members)
    _one_line_failure(good, "'../")


def test_verify_flags_shard_urls_outside_the_dataset(good, tmp_path):
    index = json.loads((good / "shardindex.json").read_text())
    index["shardlist"][0]["url"] = "../elsewhere.tar"
    (good / "shardindex.json").write_text(json.dumps(index))
    _one_line_failure(good, "outside the dataset")


@pytest.mark.parametrize("text", ["[]", '{"__kind__": "wids-shard-index-v1", "shardlist": [{"url": "a.tar"}]}'])
def test_verify_reports_a_malformed_manifest_in_one_line(good, text):
    (good / "shardindex.json").write_text(text)
    _one_line_failure(good, "shardindex.json")


# ---- bounded unpickling --------------------------------------------------------------------------------
def test_unpickler_refuses_huge_allocations_from_a_tiny_file():
    payload = b"\x80\x02c__builtin__\nbytes\nJ\x00\xca\x9a;\x85R."  # bytes(10**9) in 29 bytes
    with pytest.raises(UnsafePickleError, match=r"refs\.p: refused bytes\(1000000000\)"):
        safe_loads(payload, source="refs.p")


def test_unpickler_refuses_shared_reference_bombs():
    x: list = []
    for _ in range(40):
        x = [x, x, x, x]  # 4**40 objects once copied, a few hundred bytes pickled
    payload = pickle.dumps(x, protocol=2)
    assert len(payload) < 1000
    with pytest.raises(UnsafePickleError, match="more than"):
        safe_loads(payload, source="refs.p")
    deep = b"\x80\x02" + b"(" * 5000 + b"]" + b"l" * 5000 + b"."  # MARK … LIST: 5001 nested lists, 10 kB
    with pytest.raises(UnsafePickleError, match="nested deeper"):
        safe_loads(deep, source="refs.p")


# ---- whole-file problems stop the run before any shard ---------------------------------------------------
@pytest.mark.parametrize("case", ["instances", "explanatory", "images"])
def test_whole_file_problems_stop_before_any_shard(fx, tmp_path, case):
    if case == "instances":
        (fx.roots["refcoco"] / "refcoco" / "instances.json").write_text('{"images": [')
        reader, needle = _reader(fx), "instances.json: not valid JSON"
    elif case == "explanatory":
        (fx.roots["reasonseg"] / "explanatory" / "train.json").write_text("{{")
        reader, needle = _reader(fx, "reasonseg"), "train.json: not valid JSON"
    else:
        reader, needle = _reader(fx, images=str(tmp_path / "nowhere")), "image directory does not exist"
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=needle) as err:
        convert(reader, out, shard_size=2)
    assert "\n" not in str(err.value)
    assert not list(out.glob("*.tar")) and not (out / "shardindex.json").exists()


# ---- silent drops become rejects -------------------------------------------------------------------------
def test_reasonseg_annotation_without_image_is_a_counted_reject(fx, tmp_path):
    (fx.roots["reasonseg"] / "train" / "orphan.json").write_text(json.dumps({"text": ["q"], "shapes": []}))
    index = convert(_reader(fx, "reasonseg"), tmp_path / "out", shard_size=10)
    assert index["counts"]["in"] == fx.counts["reasonseg"]["train"] + 1
    assert index["counts"]["rejected_by_reason"]["image_missing"] == 1


def test_bad_refs_entries_are_rejects_not_characters_or_drops(fx, tmp_path):
    refs_path = fx.roots["refcoco"] / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    refs[0]["sentences"] = "a string, not a list"
    refs += ["not a dict", {"ref_id": 99, "split": "nosuchsplit"}]
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    total = 0
    for split in ("train", "val", "testA", "testB"):
        index = convert(_reader(fx, split=split), tmp_path / split, shard_size=10)
        total += index["counts"]["in"]
        if split == "train":
            assert index["counts"]["rejected_by_reason"]["annotation_invalid"] == 3
    assert total == len(refs)  # every entry of the file counted once: in = kept + rejected over the splits


def test_json_with_duplicate_keys_is_refused(fx, tmp_path):
    stem = fx.roots["reasonseg"] / "train" / "plain.json"
    stem.write_text('{"text": ["a"], "text": ["b"], "shapes": []}')
    convert(_reader(fx, "reasonseg"), tmp_path / "rs", shard_size=10)
    rejects = {r["location"].rsplit("/", 1)[-1]: r for r in _rejects(tmp_path / "rs")}
    assert rejects["plain.jpg"]["reason"] == "annotation_invalid" and "twice" in rejects["plain.jpg"]["detail"]
    llava = fx.roots["llava-instruct"] / "llava_instruct_150k.json"
    llava.write_text('[{"id": "1", "id": "2"}]')
    with pytest.raises(SourceError, match="appears twice"):
        convert(_reader(fx, "llava-instruct"), tmp_path / "ll", shard_size=10)


# ---- workers die with their parent -----------------------------------------------------------------------
_SLOW_PARENT = """
import sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from pathlib import Path
from pipeline.convert import convert
from pipeline.sources.refcoco import RefCocoReader

class Slow(RefCocoReader):
    def read(self, index, record):
        Path({flags!r}, f"worker-{{__import__('os').getpid()}}").touch()
        time.sleep(600)

convert(Slow({root!r}, "train", images={images!r}), {out!r}, shard_size=1, workers=2)
"""


def test_pool_workers_die_with_a_killed_parent(fx, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    code = _SLOW_PARENT.format(repo=str(REPO), tests=str(Path(__file__).parent), flags=str(flags),
                               root=str(fx.roots["refcoco"]), images=fx.options["refcoco"]["images"], out=str(tmp_path / "out"))
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while len(list(flags.iterdir())) < 2:
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = [int(p.name.split("-")[1]) for p in flags.iterdir()]
        os.kill(parent.pid, signal.SIGKILL)
    finally:
        parent.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


# ---- file checks ----------------------------------------------------------------------------------------
def test_file_size_cap_rejects_before_reading(fx, tmp_path):
    index = convert(_reader(fx, max_bytes=200), tmp_path / "out", shard_size=10)
    assert index["counts"]["rejected_by_reason"].get("file_too_large", 0) >= 1
    with pytest.raises(RejectError, match="file_too_large"):
        read_regular_file(fx.roots["reasonseg"] / "train" / "plain.jpg", max_bytes=10)


def _jpeg_with_thumbnail_cut_before_scan() -> bytes:
    thumb = jpeg(8, 8, 3)
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, "JPEG")
    body = full.getvalue()
    app1 = b"Exif\x00\x00" + thumb  # a complete JPEG (SOS … EOI) inside APP1, as an EXIF thumbnail is
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    data = body[:2] + segment + body[2:]
    return data[: data.find(b"\xff\xda", len(segment) + 2)]  # cut before the main image's scan


def test_jpeg_cut_before_its_scan_is_truncated_even_with_a_thumbnail():
    with pytest.raises(RejectError) as err:
        probe_image(_jpeg_with_thumbnail_cut_before_scan(), "cut.jpg")
    assert err.value.reason in ("image_truncated", "image_corrupt")


def test_png_with_trailing_bytes_is_valid():
    data = png(np.zeros((8, 8), np.uint8)) + b"\0" * 200
    assert probe_image(data, "x.png").size == (8, 8)
    with pytest.raises(RejectError, match="image_truncated"):
        probe_image(data[:40], "x.png")


def test_a_jpeg_named_png_is_not_a_label_map(fx, tmp_path):
    maps = fx.roots["cocostuff"] / "stuffthingmaps_trainval2017" / "train2017"
    gray = io.BytesIO()
    Image.fromarray(np.zeros((22, 28), np.uint8)).save(gray, "JPEG")
    (maps / f"{101:012d}.png").write_bytes(gray.getvalue())
    index = convert(_reader(fx, "cocostuff", "train2017"), tmp_path / "out", shard_size=10)
    assert index["counts"]["rejected_by_reason"]["labelmap_format"] == 1


def test_fifo_is_a_reject_not_a_hang(fx, tmp_path):
    maps = fx.roots["cocostuff"] / "stuffthingmaps_trainval2017" / "train2017"
    os.mkfifo(maps / f"{555:012d}.png")
    (fx.roots["cocostuff"].parent / "coco" / "train2017" / f"{555:012d}.jpg").write_bytes(jpeg(10, 10, 1))
    index = convert(_reader(fx, "cocostuff", "train2017"), tmp_path / "out", shard_size=10)
    assert index["counts"]["rejected_by_reason"]["not_a_file"] == 1


def test_magicbrush_mask_stored_as_zero_one_is_a_mask():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1
    got = decode_binary_mask(png(mask), "mask")
    assert got.sum() == 24 and got[2:6, 3:9].all()


# ---- unusable output paths -------------------------------------------------------------------------------
def _cli(*args: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from smartedit_cli.main import main; sys.exit(main(sys.argv[1:]))",
                           *args], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=180, preexec_fn=preexec)


def _limit_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("case", ["file", "readonly", "full"])
def test_unusable_output_is_one_line_and_leaves_no_final_file(fx, tmp_path, case):
    if os.geteuid() == 0 and case == "readonly":
        pytest.skip("root ignores directory permissions")
    out = tmp_path / "out"
    preexec = None
    if case == "file":
        out.write_text("not a directory")
    elif case == "readonly":
        out.mkdir()
        out.chmod(0o555)
    else:
        preexec = _limit_file_size
    result = _cli("convert", "magicbrush", "--root", str(fx.roots["magicbrush"]), "--split", "train", "--out", str(out),
                  preexec=preexec)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if out.is_dir():
        assert not list(out.rglob("*.tar")) and not list(out.rglob("shardindex.json"))
        assert not list(out.rglob("*.tmp"))


# ---- COCO-Stuff layouts users have -----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["zip_in_place", "lisa", "mmseg"])
def test_cocostuff_layouts(fx, tmp_path, layout):
    maps = fx.roots["cocostuff"] / "stuffthingmaps_trainval2017"
    images = Path(fx.options["cocostuff"]["images"])
    root = tmp_path / layout
    if layout == "zip_in_place":
        maps.rename(root)
        options = {"images": str(images)}
    elif layout == "lisa":
        root.mkdir()
        maps.rename(root / "cocostuff")
        images.rename(root / "coco")
        options = {}
    else:
        (root / "annotations").mkdir(parents=True)
        for split in ("train2017", "val2017"):
            (maps / split).rename(root / "annotations" / split)
        (root / "annotations" / "train2017" / f"{101:012d}_labelTrainIds.png").write_bytes(png(np.zeros((2, 2), np.uint8)))
        images.rename(root / "images")
        options = {}
    manifests = convert_source("cocostuff", root, tmp_path / "out", shard_size=10, **options)
    assert sorted(manifests) == ["train2017", "val2017"]
    assert manifests["train2017"]["counts"]["in"] == fx.counts["cocostuff"]["train2017"]
    assert manifests["train2017"]["counts"]["kept"] == 4


def test_cocostuff_error_lists_the_layouts_tried(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"layouts tried:.*stuffthingmaps_trainval2017.*\(LISA\).*\(mmseg\)"):
        convert_source("cocostuff", tmp_path / "empty", tmp_path / "out")
