"""Model inference queued per device: one worker thread per device runs every model call for the
sessions on it, one at a time, in the order they came.

A predictor and the embeddings it computes are not safe to use from two threads at once, and one
device gains nothing from two concurrent jobs anyway; a queue per device keeps concurrent users from
corrupting each other's work and lets the server use several GPUs (`--device cuda:0 --device cuda:1`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from medsam2.engine.models import load_predictor

T = TypeVar("T")


class DeviceWorker:
    """One device: its predictor (loaded on first use, in the worker thread) and its job queue."""

    def __init__(self, model: str, device: str, name: str, compiled: bool = False):
        self.model = model
        self.device = device
        self.name = name
        self.compiled = compiled
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"medsam2-{name}")
        self._predictor = None
        self._pending = 0
        self._pending_lock = threading.Lock()

    @property
    def description(self) -> str | None:
        """What this device runs, in words (None until the model is loaded)."""
        return None if self._predictor is None else self._predictor.description

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def submit(self, job: Callable[[object], T]) -> Future[T]:
        """Queue `job(predictor)`; the future holds its result or its exception."""
        with self._pending_lock:
            self._pending += 1
        return self._executor.submit(self._run, job)

    def _run(self, job: Callable[[object], T]) -> T:
        try:
            if self._predictor is None:
                self._predictor = load_predictor(self.model, self.device, compiled=self.compiled)
            return job(self._predictor)
        finally:
            with self._pending_lock:
                self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class InferencePool:
    """The workers of a server, one per configured device."""

    def __init__(self, model: str, devices: tuple[str, ...], compiled: bool = False):
        self.workers = [
            DeviceWorker(model, device, f"{device}#{index}", compiled) for index, device in enumerate(devices)
        ]

    def load(self) -> None:
        """Load every device's model now (the CLI does, so a bad --model fails before the server starts)."""
        for future in [worker.submit(lambda predictor: None) for worker in self.workers]:
            future.result()

    @property
    def description(self) -> str | None:
        """What the server runs, in words (None until a device has loaded its model)."""
        return next((worker.description for worker in self.workers if worker.description), None)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
