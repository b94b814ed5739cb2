"""The local engine: worker processes on this machine, each loading its models once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.process import BaseProcess

from tqdm import tqdm

from medsam2.distributed.manifest import Case
from medsam2.distributed.worker import BatchSettings, CaseResult, CaseRunner

# A case is tried this many times when the worker process running it dies (killed for memory, say).
MAX_ATTEMPTS = 3


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection  # the driver's end of the worker's pipe
    case: Case | None = None  # the case it is running
    attempt: int = 0


class LocalEngine:
    """`workers` processes running one case at a time each; by default one per CPU (one in all on a
    GPU), and no more than the `cases` there are to run, since each loads the model.

    Each process splits the CPUs with the others (`threads` torch threads each, default CPUs //
    workers) and keeps one `CaseRunner`, hence each model, for its whole life. Cases go to idle
    workers one at a time, so a stopped run has at most one case per worker to finish, and the
    driver knows which case a dying worker was running: that case alone is tried again.
    """

    name = "local"

    def __init__(
        self, settings: BatchSettings, workers: int | None = None, threads: int | None = None, *, cases: int | None = None
    ):
        cpus = available_cpus()
        self.workers = workers or min(cpus if settings.device == "cpu" else 1, cases or cpus)
        self.threads = threads or max(1, cpus // self.workers)
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")  # fresh interpreters: no copy of the driver's threads
        self._pool = [self._start_worker() for _ in range(self.workers)]

    def _start_worker(self) -> _Worker:
        driver_end, worker_end = self._context.Pipe()
        # Daemonic: ended with the driver however it exits.
        process = self._context.Process(target=_serve, args=(worker_end, self._settings, self.threads), daemon=True)
        process.start()
        worker_end.close()
        return _Worker(process, driver_end)

    @property
    def busy(self) -> bool:
        return any(worker.case is not None for worker in self._pool)

    def has_room(self) -> bool:
        return any(worker.case is None for worker in self._pool)

    def submit(self, case: Case, attempt: int = 1) -> None:
        worker = next(worker for worker in self._pool if worker.case is None)
        if not worker.process.is_alive():  # died while idle
            worker.connection.close()
            worker = self._pool[self._pool.index(worker)] = self._start_worker()
        worker.connection.send(case)
        worker.case, worker.attempt = case, attempt

    def wait(self, timeout: float) -> list[CaseResult]:
        """The cases finished within `timeout` seconds (maybe none)."""
        running = [worker for worker in self._pool if worker.case is not None]
        wait_for([w.connection for w in running] + [w.process.sentinel for w in running], timeout)
        results = []
        for worker in running:
            if worker.connection.poll():
                try:
                    results.append(worker.connection.recv())
                    worker.case = None
                    continue
                except EOFError:
                    pass  # it died before answering
            if not worker.process.is_alive():
                results.extend(self._replace_dead(worker))
        return results

    def _replace_dead(self, dead: _Worker) -> list[CaseResult]:
        """Start a new worker in place of `dead` and give its case another try, up to `MAX_ATTEMPTS`."""
        dead.connection.close()
        self._pool[self._pool.index(dead)] = self._start_worker()
        case, attempt = dead.case, dead.attempt
        assert case is not None
        if attempt < MAX_ATTEMPTS:
            self.submit(case, attempt + 1)
            return []
        error = f"its worker process died {attempt} times while running it (exit code {dead.process.exitcode}; out of memory?)"
        return [CaseResult(case.case_id, "failed", 0.0, "local", error=error)]

    def close(self, now: bool = False) -> None:
        """Stop the workers: once they are idle, or `now`, terminating the running cases."""
        for worker in self._pool:
            if now or not worker.process.is_alive():
                worker.process.terminate()
            else:
                worker.connection.send(None)
        for worker in self._pool:
            worker.process.join()
            worker.connection.close()


def _serve(connection: Connection, settings: BatchSettings, threads: int) -> None:
    """A worker's life: run the cases the driver sends until it sends None or is gone."""
    # Ctrl-C reaches the whole process group: the driver alone decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore, registered with the driver's resource
    # tracker by a spawned process; a worker terminated on an error (a full disk) never unlinks it,
    # and the tracker warned of a leaked semaphore after the one-line error. A worker's bars are its own.
    tqdm.set_lock(threading.RLock())
    runner = CaseRunner(settings, threads)
    while True:
        try:
            case = connection.recv()
        except EOFError:  # the driver died: nobody would read a result
            return
        if case is None:
            return
        connection.send(runner.run(case))
