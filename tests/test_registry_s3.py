"""The champion registry on a bucket (a real S3 server: moto's server mode, through s3fs): conditional writes
(If-Match / If-None-Match), a lost race redone, concurrent writers losing nothing, errors naming the URL."""

from __future__ import annotations

import json
import threading

import pytest

import model.registry as registry_module
from model.registry import ChampionRegistry
from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it


def _url(name: str) -> str:
    return f"s3://{BUCKET}/registry/{name}.json"


def _stored(fs, url: str) -> dict:
    return json.loads(fs.cat_file(url.removeprefix("s3://")))


def test_bucket_registry_records_champion_anchor_and_history(s3):
    fs, _ = s3
    url = _url("basic")
    reg = ChampionRegistry(url)
    assert reg.champion is None and reg.load()["history"] == []  # no object yet: empty, nothing written
    assert not fs.exists(url)
    reg.record({"pipeline": "s3://b/runs/a/pipeline", "metrics": {"psnr": float("nan")}}, {"promote": True})
    reg.record({"pipeline": "s3://b/runs/b/pipeline"}, {"promote": False})
    data = _stored(fs, url)
    assert data["champion"]["pipeline"] == data["anchor"]["pipeline"] == "s3://b/runs/a/pipeline"
    assert [h["decision"]["promote"] for h in data["history"]] == [True, False]
    assert data["history"][0]["metrics"]["psnr"] is None  # NaN stored as null, as locally
    reg.refresh("champion", {"metrics": {"psnr": 20.0}})
    assert ChampionRegistry(url).champion["metrics"] == {"psnr": 20.0}


def test_a_writer_that_loses_the_race_redoes_its_change(s3):
    """Writer A reads, writer B writes in between, A's conditional PUT gets 412 and A re-reads and re-applies: both
    changes are kept (an unconditional PUT would have dropped B's)."""
    url = _url("race")
    reg, other = ChampionRegistry(url), ChampionRegistry(url)
    reg.record({"pipeline": "first"}, {"promote": True})  # the object exists: A's PUT carries If-Match
    calls = []

    def change(data):
        calls.append(len(data["history"]))
        if len(calls) == 1:
            other.record({"pipeline": "B"}, {"promote": False})
        data["history"].append({"pipeline": "A"})

    reg.update(change)
    assert calls == [1, 2]  # applied twice: the second time on top of B's write
    assert [h["pipeline"] for h in reg.load()["history"]] == ["first", "B", "A"]

    # creating: If-None-Match: * loses to a writer that created the object first
    url2 = _url("race-create")
    creating, first = ChampionRegistry(url2), ChampionRegistry(url2)
    seen = []

    def create(data):
        seen.append(len(data["history"]))
        if len(seen) == 1:
            first.record({"pipeline": "creator"}, {"promote": True})
        data["history"].append({"pipeline": "second"})

    creating.update(create)
    assert seen == [0, 1] and [h["pipeline"] for h in creating.load()["history"]] == ["creator", "second"]


def test_concurrent_writers_lose_no_decision(s3):
    url, n, writers = _url("concurrent"), 6, 3
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            reg = ChampionRegistry(url)
            for i in range(n):
                reg.record({"pipeline": f"{name}-{i}"}, {"promote": i == n - 1})
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(f"w{k}",)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    history = [h["pipeline"] for h in ChampionRegistry(url).load()["history"]]
    assert sorted(history) == sorted(f"w{k}-{i}" for k in range(writers) for i in range(n))
    for k in range(writers):  # each writer's decisions in its own order
        mine = [h for h in history if h.startswith(f"w{k}-")]
        assert mine == [f"w{k}-{i}" for i in range(n)]


def test_exhausted_retries_and_corrupt_objects_name_the_url(s3, monkeypatch):
    fs, _ = s3
    url = _url("busy")
    reg, other = ChampionRegistry(url), ChampionRegistry(url)
    reg.record({"pipeline": "first"}, {"promote": True})
    monkeypatch.setattr(registry_module, "ATTEMPTS", 3)

    def always_interrupted(data):
        other.record({"pipeline": "meddler"}, {"promote": False})

    with pytest.raises(RuntimeError, match=f"{url}: registry update lost the race to other writers 3 times"):
        reg.update(always_interrupted)
    assert len(reg.load()["history"]) == 1 + 3  # the meddler's writes, none of ours, nothing corrupted

    cut = _url("cut")
    fs.pipe(cut.removeprefix("s3://"), b'{"champion": null, "hist')
    with pytest.raises(ValueError, match=f"^{cut}: registry is not valid JSON") as err:
        ChampionRegistry(cut).record({"pipeline": "x"}, {"promote": True})
    assert "\n" not in str(err.value)
    assert fs.cat_file(cut.removeprefix("s3://")) == b'{"champion": null, "hist'  # left as it was
    wrong = _url("wrong")
    fs.pipe(wrong.removeprefix("s3://"), b'[1, 2]')
    with pytest.raises(ValueError, match=f"^{wrong}: not a champion registry"):
        ChampionRegistry(wrong).load()


def test_a_registry_in_a_missing_bucket_names_the_url(s3):
    url = "s3://no-such-bucket-here/registry.json"
    with pytest.raises(FileNotFoundError, match=f"^{url}: cannot write the registry .*create the bucket"):
        ChampionRegistry(url).record({"pipeline": "x"}, {"promote": True})
