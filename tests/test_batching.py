"""The server's micro-batcher alone: batches, each request's own rows, limits, failures (no model, no HTTP)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmark.use.batching import MicroBatcher


class Recorder:
    """A stand-in model: row i of a batch is (image id, batch size); records every batch's size."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None):
        self.sizes, self.delay, self.fail_on = [], delay, fail_on

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in images[:, 0]:
            raise RuntimeError("planted model failure")
        return np.stack([images[:, 0], np.full(len(images), len(images))], axis=1)


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=float)[:, None]


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    model = Recorder(delay=0.02)
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=100)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda i: batcher.submit(ids(i)).result(timeout=30), range(24)))
    batcher.close()
    assert [a[0, 0] for a in answers] == list(range(24))  # each request its own row
    assert sum(model.sizes) == 24 and max(model.sizes) <= 8
    assert len(model.sizes) < 24 and batcher.forward_passes == len(model.sizes)  # batched


def test_an_idle_batcher_answers_after_max_wait_and_a_full_batch_leaves_at_once():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=300)
    started = time.monotonic()
    assert batcher.submit(ids(7)).result(timeout=5)[0, 0] == 7
    assert 0.25 < time.monotonic() - started < 3  # waited for companions, then went alone
    started = time.monotonic()
    assert batcher.submit(ids(1, 2, 3, 4)).result(timeout=5)[:, 0].tolist() == [1, 2, 3, 4]
    assert time.monotonic() - started < 0.25  # max_batch images: no wait
    batcher.close()
    assert model.sizes == [1, 4]


def test_a_request_is_never_split_and_one_over_max_batch_runs_alone():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=200)
    small, big, after = batcher.submit(ids(1, 2, 3)), batcher.submit(ids(*range(10, 16))), batcher.submit(ids(4))
    assert small.result(timeout=5)[:, 0].tolist() == [1, 2, 3]
    assert big.result(timeout=5)[:, 0].tolist() == list(range(10, 16))
    assert after.result(timeout=5)[:, 0].tolist() == [4]
    batcher.close()
    assert model.sizes == [3, 6, 1]  # in arrival order, none split


def test_a_model_failure_fails_its_batch_only_and_the_worker_goes_on():
    model = Recorder(fail_on=99)
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=200)
    first, second = batcher.submit(ids(99)), batcher.submit(ids(5))
    with pytest.raises(RuntimeError, match="planted model failure"):
        first.result(timeout=5)
    with pytest.raises(RuntimeError, match="planted model failure"):
        second.result(timeout=5)  # shared the failing pass
    assert batcher.submit(ids(6)).result(timeout=5)[0, 0] == 6  # the worker is still alive
    batcher.close()


def test_a_cancelled_request_is_skipped_and_close_scores_what_is_queued():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=10_000)
    gone, kept = batcher.submit(ids(1)), batcher.submit(ids(2))
    assert gone.cancel()  # the client went away before its batch left
    closer = threading.Thread(target=batcher.close)
    closer.start()  # closing does not wait out max_wait_ms
    assert kept.result(timeout=5)[0, 0] == 2
    closer.join(5)
    assert not closer.is_alive() and model.sizes == [1]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(ids(3))


@pytest.mark.parametrize("options", [{"max_batch": 0}, {"max_wait_ms": -1}])
def test_bad_limits_are_refused(options):
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), **options)
