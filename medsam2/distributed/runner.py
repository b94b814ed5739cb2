"""The batch driver: skip what is done, stream the rest to an engine, record each case as it ends.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM stops handing out cases; the cases already running
finish and are recorded, then the run returns with `BatchReport.stopped_by` set. A second signal
stops at once (`StoppedAtOnce`, a `KeyboardInterrupt`), dropping the running cases; they are done
again by the next run, as are those of a driver killed outright. Either way nothing recorded is
lost or redone.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm

from medsam2.distributed.manifest import Case
from medsam2.distributed.results import ResultsStore, fingerprints
from medsam2.distributed.worker import BatchSettings, CaseResult
from medsam2.engine.registry import pinned_spec
from medsam2.errors import InputError

# How often the driver wakes, at most, to notice a stop request while cases run.
POLL_SECONDS = 0.5
PROGRESS_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


class Engine(Protocol):
    """Where cases run: `LocalEngine` or `RayEngine`."""

    name: str
    workers: int
    threads: int

    @property
    def busy(self) -> bool: ...  # some case is in flight

    def has_room(self) -> bool: ...  # a case submitted now would start without waiting

    def submit(self, case: Case) -> None: ...

    def wait(self, timeout: float) -> list[CaseResult]: ...

    def close(self, now: bool = False) -> None: ...


@dataclass
class BatchReport:
    """What a run did, and where the whole manifest stands after it."""

    cases: int  # in the manifest
    done_before: int  # skipped: done by earlier runs
    records: list[dict] = field(default_factory=list)  # this run's results, in finishing order
    latest: dict[str, dict] = field(default_factory=dict)  # case id -> its current record (done cases only)
    seconds: float = 0.0
    stopped_by: int | None = None  # the signal that stopped the run early
    engine: str = ""
    workers: int = 0
    threads: int = 0
    # cases of earlier manifests the folder holds results of (their masks are kept, not in the table)
    unlisted: int = 0

    def count(self, status: str) -> int:
        return sum(record["status"] == status for record in self.latest.values())

    @property
    def pending(self) -> int:
        return self.cases - len(self.latest)


def run_batch(
    cases: list[Case],
    settings: BatchSettings,
    make_engine: Callable[[int], Engine],
    *,
    retry_failed: bool = False,
    progress: bool = True,
    announce: Callable[[str], None] = print,
    stop: StopRequest | None = None,
) -> BatchReport:
    """Run every case of `cases` not done yet in `settings.out_dir` on the engine
    ``make_engine(number of cases to run)`` makes, recording each as it finishes. Stop signals
    are noted in `stop` (from `stop_requests`, which a caller holds to cover what it does after,
    e.g. printing the summary), or in a request of the run's own."""
    by_case = fingerprints(cases, settings)
    started = time.perf_counter()
    with ResultsStore(settings.out_dir) as store:
        todo = [case for case in cases if not store.is_done(case, by_case[case.case_id], retry_failed)]
        report = BatchReport(cases=len(cases), done_before=len(cases) - len(todo))
        report.unlisted = len(store.latest.keys() - by_case.keys())
        try:
            engine = make_engine(len(todo)) if todo else None
        except BaseException:  # no engine (a cluster not there, no GPU): nothing is written
            store.abandon()
            raise
        failure: BaseException | None = None
        try:
            if engine is None:
                failed = sum(store.latest[case.case_id].get("status") == "failed" for case in cases)
                retry = f" ({failed} failed: --retry-failed runs them again)" if failed else ""
                announce(f"all {len(cases)} cases were run by earlier runs{retry}")
            else:
                report.engine, report.workers, report.threads = engine.name, engine.workers, engine.threads
                _stream(todo, engine, store, by_case, settings, report, progress, announce, stop)
        except BaseException as error:
            failure = error
            raise
        finally:
            try:
                store.write_table(cases, by_case)
            except InputError:  # the disk is full: the error that stopped the run says so first
                if failure is None:
                    raise
            report.latest = {
                case.case_id: store.latest[case.case_id]
                for case in cases
                if store.is_done(case, by_case[case.case_id])
            }
            report.seconds = time.perf_counter() - started
    return report


def _stream(
    todo: list[Case],
    engine: Engine,
    store: ResultsStore,
    by_case: dict[str, str],
    settings: BatchSettings,
    report: BatchReport,
    progress: bool,
    announce: Callable[[str], None],
    stop_request: StopRequest | None,
) -> None:
    queue, by_id = deque(todo), {case.case_id: case for case in todo}
    failed = 0
    try:
        announce(  # inside the try: an announcement that fails (stdout closed) still closes the engine
            f"{len(todo)} of {report.cases} cases to run ({report.done_before} done earlier) on "
            f"{engine.workers} {engine.name} worker(s), {engine.threads} thread(s) each"
        )
        progress_bar = tqdm(total=len(todo), unit="case", bar_format=PROGRESS_FORMAT, disable=not progress, dynamic_ncols=True)
        with progress_bar as bar, (nullcontext(stop_request) if stop_request else stop_requests()) as stop:
            while queue or engine.busy:
                while queue and engine.has_room() and stop.signum is None:
                    engine.submit(queue.popleft())
                if stop.signum is not None and not engine.busy:
                    break
                if stop.signum is not None and not stop.announced:
                    bar.write("stopping: finishing the cases running now (signal again to stop at once)", file=sys.stderr)
                    stop.announced = True
                for result in engine.wait(POLL_SECONDS):
                    case = by_id[result.case_id]
                    model = pinned_spec(case.model or settings.model)  # the file a preset named when it ran
                    report.records.append(store.record(result, case, by_case[case.case_id], model))
                    if result.status != "ok":
                        failed += 1
                        bar.write(f"{case.case_id}: failed: {result.error}", file=sys.stderr)
                    bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
                    bar.update()
            report.stopped_by = stop.signum if queue else None
    except BaseException:
        engine.close(now=True)
        raise
    engine.close()


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal arrived: the run ended without waiting for its running cases."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class StopRequest:
    signum: int | None = None
    announced: bool = False
    # the second signal's, once it came: `StoppedAtOnce` may reach the caller as a plain
    # KeyboardInterrupt (Ray's wait re-raises one of its own), this says it was a stop at once
    at_once: int | None = None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Note the first SIGINT/SIGTERM in the yielded request; raise `StoppedAtOnce` on a second.

    Signal handlers can only be set from the main thread; elsewhere (a driver run from a server's
    worker thread) signals keep their usual effect.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: object) -> None:
        if stop.signum is not None:
            stop.at_once = signum
            raise StoppedAtOnce(signum)
        stop.signum = signum

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
