"""Directories on a bucket (pipeline/remote_dirs.py) against moto's S3 server: several loaders of one URL at once
(every rank of a node reading ``init_from``) share one complete download."""

from __future__ import annotations

import threading

from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it


def test_loaders_of_one_url_at_once_share_one_complete_copy(s3, tmp_path, monkeypatch):
    import pipeline.remote_dirs as remote_dirs

    folder = tmp_path / "step"
    folder.mkdir()
    for i in range(60):  # enough files that unguarded downloads overlap
        (folder / f"part-{i:03d}.bin").write_bytes(bytes([i]) * 4096)
    url = f"s3://{BUCKET}/runs/shared/checkpoints/step-00000002"
    remote_dirs.upload_dir(folder, url)
    want = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    downloads = []
    real_download = remote_dirs.download_dir
    monkeypatch.setattr(remote_dirs, "download_dir", lambda *a: downloads.append(a) or real_download(*a))

    for trial in range(4):
        monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / f"cache-{trial}"))
        barrier, got = threading.Barrier(4), []

        def load() -> None:
            barrier.wait()
            try:
                copy = remote_dirs.local_copy(url)
                got.append(sorted((p.name, p.read_bytes()) for p in copy.iterdir() if p.name != remote_dirs.MARKER))
            except BaseException as err:  # noqa: BLE001 - asserted below
                got.append(repr(err))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == [want] * 4, [g if isinstance(g, str) else len(g) for g in got]
        assert len(downloads) == trial + 1  # one download per cache, however many loaders asked at once


def test_a_reupload_replaces_the_directory_and_refreshes_every_cached_copy(s3, tmp_path, monkeypatch):
    import pipeline.remote_dirs as remote_dirs

    monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / "cache"))
    url = f"s3://{BUCKET}/runs/reup/pipeline"
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "weights.bin").write_bytes(b"old")
    (old / "only-in-old.json").write_text("{}")
    (new / "weights.bin").write_bytes(b"new")
    (new / "only-in-new.json").write_text("{}")
    remote_dirs.upload_dir(old, url)
    assert (remote_dirs.local_copy(url) / "weights.bin").read_bytes() == b"old"
    remote_dirs.upload_dir(new, url)  # most likely within the same second, and with the same file count
    copy = remote_dirs.local_copy(url)
    assert (copy / "weights.bin").read_bytes() == b"new"
    assert sorted(p.name for p in copy.iterdir()) == sorted(["weights.bin", "only-in-new.json", remote_dirs.MARKER])
    fs, _ = s3
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url.removeprefix("s3://"), refresh=True)) == \
        sorted(["weights.bin", "only-in-new.json", remote_dirs.MARKER])
