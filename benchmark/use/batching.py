"""Dynamic micro-batching: images from concurrent requests gathered into one forward pass.

A request's images (already decoded and checked: a bad image never joins a batch) are queued; one worker
thread takes the queue's oldest requests once `max_batch` images wait or the oldest has waited `max_wait_ms`,
scores them in one call and hands each request its own rows. While the model is busy, requests pile up and the
next batch leaves at once, so under load batches fill without waiting and an idle server adds at most
`max_wait_ms` to a request. A request never splits across batches (one with more than `max_batch` images
runs alone); requests leave in arrival order. The forward pass releases the GIL, so the event loop keeps
reading and decoding requests meanwhile; it uses torch's intra-op threads (`OMP_NUM_THREADS`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    images: np.ndarray
    arrived: float = field(default_factory=time.monotonic)
    answer: Future = field(default_factory=Future)


class MicroBatcher:
    """Scores image arrays with `score_batch` (N images -> N rows), batching concurrent `submit`s."""

    def __init__(self, score_batch: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_ms: float = 5.0):
        if max_batch < 1 or not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_batch must be >= 1 (got {max_batch}) and max_wait_ms >= 0 (got {max_wait_ms})")
        self.score_batch, self.max_batch, self.max_wait = score_batch, max_batch, max_wait_ms / 1000
        self.forward_passes = self.images_scored = 0  # batches taken so far, and their images
        self._pending: deque[_Request] = deque()
        self._waiting_images = 0
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, images: np.ndarray) -> Future:
        """A future of `score_batch`'s rows for `images` (scored together with other requests' images)."""
        request = _Request(images)
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.append(request)
            self._waiting_images += len(images)
            self._changed.notify_all()
        return request.answer

    def close(self) -> None:
        """Score what is queued, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join()

    def _next_batch(self) -> list[_Request] | None:
        with self._changed:
            while True:
                if not self._pending:
                    if self._closed:
                        return None
                    self._changed.wait()
                    continue
                left = self._pending[0].arrived + self.max_wait - time.monotonic()
                if self._waiting_images >= self.max_batch or left <= 0 or self._closed:
                    break
                self._changed.wait(left)
            batch = [self._pending.popleft()]
            images = len(batch[0].images)
            while self._pending and images + len(self._pending[0].images) <= self.max_batch:
                images += len(self._pending[0].images)
                batch.append(self._pending.popleft())
            self._waiting_images -= images
            self.forward_passes, self.images_scored = self.forward_passes + 1, self.images_scored + images
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [request for request in batch if request.answer.set_running_or_notify_cancel()]  # not gone
            if not batch:
                continue
            sizes = [len(request.images) for request in batch]
            try:
                rows = self.score_batch(np.concatenate([request.images for request in batch]))
            except Exception as err:  # the model failed: every request of the batch gets the error
                for request in batch:
                    request.answer.set_exception(err)
                continue
            for request, start, size in zip(batch, np.cumsum([0, *sizes[:-1]]), sizes):
                request.answer.set_result(rows[start:start + size])
