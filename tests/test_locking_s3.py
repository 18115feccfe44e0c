"""The dataset lock on a bucket is a lease (pipeline/locking.py), against a real S3 server (moto's server mode):
a run killed with -9 blocks reruns only until its lease expires; of two contenders for an expired lease exactly
one wins; a holder that lost its lease publishes nothing more; a live holder is named."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from convert_fixtures import build_sources
from pipeline import locking
from pipeline.convert import convert, convert_shard, prepare_conversion
from pipeline.locking import (DatasetLock, DatasetLockedError, LeaseLostError, adopted_leases, held_leases,
                              worker_initializer)
from pipeline.sources import get_reader
from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it

REPO = Path(__file__).resolve().parents[1]
# Holders that die or stall get a short ttl (seconds; renewed every ttl/3, publishing while the last renewal is
# younger than 2/3 of it); the runs that live on (reruns, winners) a long one, so a slow shared machine never
# makes them lose their lease.
SHORT_TTL, LONG_TTL = "3", "30"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return build_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(autouse=True)
def long_ttl(monkeypatch):
    monkeypatch.setenv("SMARTEDIT_LOCK_TTL", LONG_TTL)


def _short_lived_lock(url: str, monkeypatch) -> DatasetLock:
    with monkeypatch.context() as env:
        env.setenv("SMARTEDIT_LOCK_TTL", SHORT_TTL)
        return DatasetLock(url).acquire()


def _reader(sources):
    return get_reader("refcoco", sources.roots["refcoco"], "train", **sources.options.get("refcoco", {}))


def _lock_object(fs, url: str) -> dict:
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{url.removeprefix('s3://')}/.lock"))


def _wait_until_expired(url: str) -> None:
    """Poll the lease by the server's clock (as a contender does) until it has expired."""
    obj = locking._LockObject(DatasetLock(url).path)
    deadline = time.monotonic() + 60
    while True:
        lease, _, modified, now = obj.read()
        if (now - modified).total_seconds() > float(lease["ttl"]) + locking._CLOCK_GRANULARITY:
            return
        assert time.monotonic() < deadline, f"the lease of {url} never expired"
        time.sleep(0.3)


_TAKER = """
import sys, time
sys.path.insert(0, {repo!r})
from pipeline.locking import DatasetLock, DatasetLockedError

deadline = time.monotonic() + 120  # a broken takeover fails the test (no "took" line) instead of hanging it
while True:  # another run, started while the lease is live: takes it over once it has expired
    try:
        lock = DatasetLock({url!r}).acquire()
        break
    except DatasetLockedError:
        if time.monotonic() > deadline:
            sys.exit("never took the lease over")
        time.sleep(0.3)
print("took", lock.lease.token, flush=True)
sys.stdin.readline()
lock.release()
"""


_PAUSING_RUN = """
import json, sys, time
sys.path.insert(0, {repo!r})
from pipeline.convert import convert
from pipeline.sources import get_reader

class Pausing:  # stands in for a slow conversion: stops for good at record 5 (shard 2 with shard_size 2)
    def __init__(self, inner):
        self.inner = inner
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def read(self, index, record):
        if index == 5:
            print("paused", flush=True)
            time.sleep(600)
        return self.inner.read(index, record)

convert(Pausing(get_reader("refcoco", {root!r}, "train", **json.loads({options!r}))), {url!r}, shard_size=2)
"""


def test_a_killed_runs_lease_blocks_while_fresh_then_is_taken_over(s3, sources, tmp_path, capsys):
    from smartedit_cli.main import main

    fs, _ = s3
    url = f"s3://{BUCKET}/killed/refcoco-train"
    script = _PAUSING_RUN.format(repo=str(REPO), root=str(sources.roots["refcoco"]), url=url,
                                 options=json.dumps(sources.options.get("refcoco", {})))
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "SMARTEDIT_LOCK_TTL": SHORT_TTL})
    try:
        assert run.stdout.readline().strip() == "paused"  # shards 0 and 1 published, shard 2 in progress
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
        run.wait()
    lease = _lock_object(fs, url)  # kill -9: nobody released it
    assert lease["pid"] == run.pid and lease["host"] == socket.gethostname()

    # while fresh: refused, naming the dead holder and when its lease expires
    with pytest.raises(DatasetLockedError, match=rf"host {socket.gethostname()} pid {run.pid}\b.*expires at "):
        convert(_reader(sources), url, shard_size=2)

    _wait_until_expired(url)
    rerun = convert(_reader(sources), url, shard_size=2)  # takes the expired lease over and finishes
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/killed/refcoco-train/.lock")  # released
    assert main(["shards", "verify", url]) == 0
    assert f"OK  {url}/shardindex.json" in capsys.readouterr().out
    local = convert(_reader(sources), tmp_path / "local", shard_size=2)  # an uninterrupted run
    assert [(s["url"], s["sha256"], s["nsamples"]) for s in rerun["shardlist"]] == \
        [(s["url"], s["sha256"], s["nsamples"]) for s in local["shardlist"]]
    assert rerun["counts"] == local["counts"]


def test_two_contenders_for_an_expired_lease_exactly_one_wins(s3, monkeypatch):
    fs, _ = s3
    url = f"s3://{BUCKET}/race/ds"
    dead = _short_lived_lock(url, monkeypatch)
    dead.lease.stop_renewing()  # a holder that stopped renewing (as a killed one does)
    _wait_until_expired(url)

    stale_token = _lock_object(fs, url)["token"]
    both_read_it = threading.Barrier(2, timeout=30)

    def race() -> None:  # runs in each contender after it judged the lease expired, before its takeover PUT
        if both_read_it.wait() == 1:  # both hold the stale ETag now; this one lets the other write first
            # (S3 applies concurrent conditional writes one at a time; moto's server checks and writes
            # without a lock, so the test orders the two PUTs instead of sending them together)
            deadline = time.monotonic() + 30
            while _lock_object(fs, url)["token"] == stale_token:
                assert time.monotonic() < deadline, "the first contender never took the lease over"
                time.sleep(0.05)

    monkeypatch.setattr(locking, "_takeover_hook", race)
    won: list[DatasetLock] = []
    refused: list[str] = []

    def contend() -> None:
        try:
            won.append(DatasetLock(url).acquire())
        except DatasetLockedError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 1, (won, refused)
    assert "holds its lock lease" in refused[0]  # the loser names the winner's live lease
    assert _lock_object(fs, url)["token"] == won[0].lease.token

    dead.release()  # taken over meanwhile: its release leaves the winner's lock alone
    assert _lock_object(fs, url)["token"] == won[0].lease.token
    won[0].release()
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/race/ds/.lock")


def test_a_holder_that_lost_its_lease_publishes_nothing_more(s3, sources, monkeypatch):
    fs, _ = s3
    url = f"s3://{BUCKET}/lost/refcoco-train"
    reader = _reader(sources)
    lock = _short_lived_lock(url, monkeypatch)
    plan = prepare_conversion(reader, url, shard_size=2)
    convert_shard(reader, plan.shards[0], url)  # published while the lease is ours
    lock.lease.stop_renewing()  # test hook: the holder stalls ...
    ours = held_leases()
    # ... another run waits for the lease to expire, and a pool worker is spawned (it inherits nothing) meanwhile
    taker = subprocess.Popen([sys.executable, "-c", _TAKER.format(repo=str(REPO), url=url)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=worker_initializer,
                               initargs=(os.getpid(), ours))
    try:
        pool.submit(os.getpid).result()
        took, token = taker.stdout.readline().split()
        assert took == "took"
        first, second = plan.shards[1].name, plan.shards[2].name
        with pytest.raises(LeaseLostError, match=rf"{first}: not published: this run lost its lock lease on {url}"):
            convert_shard(reader, plan.shards[1], url)
        # the pool worker (which does not renew) asks the lock object itself before publishing
        with pytest.raises(LeaseLostError, match=rf"{second}: not published: .*now held by host \S+ pid {taker.pid},"):
            pool.submit(convert_shard, reader, plan.shards[2], url).result()
        lock.release()  # lost: leaves the new holder's lock in place
        assert _lock_object(fs, url)["token"] == token
        with adopted_leases(ours):  # as a Prefect task in another process does (flows/convert.py)
            with pytest.raises(LeaseLostError, match=rf"{second}: not published: .*now held by "):
                convert_shard(reader, plan.shards[2], url)
        fs.invalidate_cache()
        names = {key.rsplit("/", 1)[-1] for key in fs.find(f"{BUCKET}/lost/refcoco-train")}
        assert plan.shards[0].name in names
        assert not any(n.startswith(first.removesuffix(".tar")) or n.startswith(second.removesuffix(".tar"))
                       for n in names), names  # neither shard, its marker nor a temporary
    finally:
        pool.shutdown()
        lock.release()
        taker.communicate("release\n", timeout=30)
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/lost/refcoco-train/.lock")  # the new holder released it


def test_a_live_holder_renewing_past_its_ttl_is_named_with_host_and_pid(s3, monkeypatch):
    fs, _ = s3
    url = f"s3://{BUCKET}/live/ds"
    held = _short_lived_lock(url, monkeypatch)
    try:
        deadline = time.monotonic() + 60
        while _lock_object(fs, url).get("renewals", 0) < 5:  # renewed every ttl/3: now held for longer than a ttl
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.2)
        holder = rf"another run \(host {socket.gethostname()} pid {os.getpid()}, since \S+\)"
        with pytest.raises(DatasetLockedError, match=rf"{holder} holds its lock lease {url}/\.lock, which expires at "):
            DatasetLock(url).acquire()
    finally:
        held.release()
    with DatasetLock(url):  # released: free again
        pass
    monkeypatch.setenv("SMARTEDIT_LOCK_TTL", "soon")
    with pytest.raises(ValueError, match=r"SMARTEDIT_LOCK_TTL='soon': not a positive number of seconds"):
        DatasetLock(url).acquire()
