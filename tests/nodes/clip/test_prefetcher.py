"""The batch prefetcher: a thread by default, forked processes for a GPU run."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.clip.data import Prefetcher


def draw(rng: np.random.Generator) -> int:
    return int(rng.integers(1 << 62))


def failing(rng: np.random.Generator) -> int:
    raise RuntimeError("renderer broke")


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_batches_are_all_different(workers: int) -> None:
    batches = Prefetcher(draw, seed=7, workers=workers)
    try:
        drawn = [batches.next() for _ in range(12)]
    finally:
        batches.close()
    assert len(set(drawn)) == len(drawn)  # no two workers repeat one stream


def test_the_thread_draws_the_seed_stream_in_order() -> None:
    batches = Prefetcher(draw, seed=7)
    try:
        drawn = [batches.next() for _ in range(3)]
    finally:
        batches.close()
    rng = np.random.default_rng(7)
    assert drawn == [draw(rng) for _ in range(3)]  # a run with workers=0 stays reproducible


def test_worker_processes_end_on_close() -> None:
    batches = Prefetcher(draw, seed=1, workers=2)
    batches.next()
    batches.close()
    assert not any(process.is_alive() for process in batches._processes)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failing_maker_raises_in_the_consumer(workers: int) -> None:
    batches = Prefetcher(failing, seed=0, workers=workers)
    try:
        with pytest.raises(RuntimeError, match="renderer broke"):
            batches.next()
    finally:
        batches.close()
