"""The synthetic builder's stage contract, written once (datatrove-style steps).

A stage is a generator over items: `Reject`s from earlier stages pass through untouched, every other
item goes to the stage's own method, and whatever comes back is counted. Three shapes:

- `MapStage.map(item) -> item | Reject`: one in, one out (load, masks, editor, ...);
- `FilterStage.check(item) -> Reject | None`: keep the item unless a reject comes back;
- `Stage.process(item) -> iterable`: one in, any number out (scene → per-scenario candidates).

`BatchMapStage` maps lists of items (the editor batches its pairs). A pipeline is a plain list of stages
(`run_stages`), and each stage's name keys its counters: items in, out, dropped by reason, seconds
(the yields table of the manifest and the data card). A stage may stop reading (`exhausted`), which
stops the whole lazy chain upstream (planning stops once every scenario quota is met).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

from pipeline.records import Reject

StageStats = dict[str, Any]  # {"in": n, "out": n, "dropped": {reason: n}, "seconds": s}


def new_stats() -> StageStats:
    return {"in": 0, "out": 0, "dropped": {}, "seconds": 0.0}


class Stage:
    """Base stage. Subclasses set `name` and implement `process` (or use MapStage / FilterStage)."""

    name: ClassVar[str] = "stage"
    fan_out: ClassVar[bool] = False  # one input may give several outputs (out / in is then no yield)

    def process(self, item: Any) -> Iterable[Any]:
        raise NotImplementedError

    def exhausted(self) -> bool:
        """True once the stage wants no more input (checked after each item)."""
        return False

    def __call__(self, items: Iterable[Any], stats: StageStats | None = None) -> Iterator[Any]:
        stats = stats if stats is not None else new_stats()
        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            stats["in"] += 1
            t0 = time.perf_counter()
            results = list(self.process(item))
            stats["seconds"] += time.perf_counter() - t0
            for result in results:
                _count(stats, result)
                yield result
            if self.exhausted():
                return


def _count(stats: StageStats, result: Any) -> None:
    if isinstance(result, Reject):
        stats["dropped"][result.reason] = stats["dropped"].get(result.reason, 0) + 1
    else:
        stats["out"] += 1


class MapStage(Stage):
    """One item in, one item (or a Reject) out."""

    def map(self, item: Any) -> Any:
        raise NotImplementedError

    def process(self, item: Any) -> Iterable[Any]:
        return (self.map(item),)


class FilterStage(Stage):
    """Keeps an item unless `check` returns a Reject (scores may be recorded on the item meanwhile)."""

    def check(self, item: Any) -> Reject | None:
        raise NotImplementedError

    def process(self, item: Any) -> Iterable[Any]:
        reject = self.check(item)
        return (item if reject is None else reject,)


class BatchMapStage(Stage):
    """Like MapStage over lists of up to `batch_size` items (one model call per batch).

    Rejects arriving meanwhile pass straight on; the batch's results keep their input order.
    """

    batch_size: int = 1

    def map_batch(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def __call__(self, items: Iterable[Any], stats: StageStats | None = None) -> Iterator[Any]:
        stats = stats if stats is not None else new_stats()
        batch: list[Any] = []

        def flush() -> Iterator[Any]:
            t0 = time.perf_counter()
            results = self.map_batch(batch)
            stats["seconds"] += time.perf_counter() - t0
            for result in results:
                _count(stats, result)
                yield result

        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            stats["in"] += 1
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from flush()
                batch = []
        if batch:
            yield from flush()


def run_stages(stages: Sequence[Stage], items: Iterable[Any], yields: dict[str, StageStats]) -> Iterator[Any]:
    """Chain the stages lazily over ``items``; each stage's counters go to ``yields[stage.name]``."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    out: Iterable[Any] = items
    for stage in stages:
        stats = yields.setdefault(stage.name, new_stats())
        stats["fan_out"] = stage.fan_out
        out = stage(out, stats)
    return iter(out)


def stage_names(stages: Sequence[Stage]) -> list[str]:
    return [s.name for s in stages]
