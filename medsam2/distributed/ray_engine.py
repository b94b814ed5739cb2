"""The Ray engine: one actor per GPU or per CPU slot of a Ray cluster, each holding its models.

Ray places the actors on the cluster's nodes, restarts an actor whose process dies and retries
the case it was running on the restarted actor (`MAX_TASK_RETRIES` times); the driver keeps one
case in flight per actor, so the manifest is streamed, never submitted whole. Every node needs
medsam2 installed and the manifest's paths (images, prompt files, ground truth, the output folder)
at the same place, as on a shared file system. Needs ``pip install 'medsam2[distributed]'``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from medsam2.distributed.manifest import Case
from medsam2.distributed.worker import BatchSettings, CaseResult, CaseRunner
from medsam2.errors import InputError

# Retries of a case on a restarted actor after its process died (node lost, killed for memory).
MAX_TASK_RETRIES = 2
# Ray waits minutes for a cluster that is not there, deaf to signals meanwhile: knock first.
CONNECT_TIMEOUT_S = 10.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'medsam2[distributed]'") from None
    return ray


def check_cluster_address(address: str | None) -> None:
    """Check the address Ray will connect to: `address` (--ray-address), else $RAY_ADDRESS (Ray's
    default, which it would otherwise wait on for minutes); neither: a local Ray is started."""
    if address is not None:
        check_ray_address(address)
    elif os.environ.get("RAY_ADDRESS"):
        check_ray_address(os.environ["RAY_ADDRESS"], "$RAY_ADDRESS")


def check_ray_address(address: str, given_as: str = "--ray-address") -> None:
    """An `InputError` unless a gRPC server (a Ray head's GCS) answers at a HOST:PORT address ("auto"
    and ray:// are Ray's)."""
    host, separator, port = address.rpartition(":")
    if address == "auto" or "://" in address:
        return
    if not separator or not port.isdigit():
        raise InputError(f"{given_as} {address!r}: expected HOST:PORT (the head node's GCS port, 6379 by default), auto or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"{given_as} {address}: no Ray cluster answers there ({error.strerror or error})") from None
    if not answers_grpc(address):
        raise InputError(
            f"{given_as} {address}: something listens there, but not a Ray cluster's GCS, which speaks gRPC "
            "(give the head node's GCS port, 6379 by default; 8265 is its dashboard)"
        )


def answers_grpc(address: str) -> bool:
    """Whether an HTTP/2 (gRPC) connection to `address` is set up within the connect timeout."""
    import grpc  # a dependency of Ray

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def handlers_kept(init: Callable[[], None]) -> None:
    """Run `init` (ray.init), then put back the SIGINT/SIGTERM handlers a caller had set: Ray sets
    its own SIGTERM handler, which exits at once (the running cases unrecorded, no summary) where the
    batch's finishes them. Default handlers are left to Ray, which shuts its local cluster down."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    init()
    if threading.current_thread() is threading.main_thread():
        for signum, handler in kept.items():
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(signum, handler)


# Ray's notice, on each start of a cluster of its own, that it turned its token authentication on:
# the safe default, told to a batch user on every run as a WARNING beside the batch's own lines.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


class RayEngine:
    """Cases on Ray actors: `workers` of them; by default as many as the cluster has GPUs, for a CUDA
    device, or CPU slots of `threads` CPUs (default 1), and no more than the `cases` to run.

    Connects to the cluster at `address` ("auto", "HOST:PORT", or ``ray://HOST:PORT`` with
    ``ray[client]``), or starts a local one when `address` is None and ``RAY_ADDRESS`` is unset; a
    Ray already initialised in this process is used as it is.
    """

    name = "ray"

    def __init__(
        self,
        settings: BatchSettings,
        workers: int | None = None,
        threads: int | None = None,
        address: str | None = None,
        *,
        cases: int | None = None,
    ):
        ray = self._ray = import_ray()
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            check_cluster_address(address)
            try:
                notices = logging.getLogger(RAY_AUTH_LOGGER)
                notices.addFilter(_token_auth_notice)
                try:
                    handlers_kept(lambda: ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING))
                finally:
                    notices.removeFilter(_token_auth_notice)
            except (ConnectionError, ValueError, RuntimeError) as error:
                given = f"--ray-address {address}" if address is not None else f"$RAY_ADDRESS {os.environ.get('RAY_ADDRESS')}"
                raise InputError(f"{given}: cannot connect to a Ray cluster ({error})") from None
        self.threads = threads or 1
        gpus = 0 if settings.device == "cpu" else 1
        resource, per_worker = ("GPU", 1) if gpus else ("CPU", self.threads)
        available = ray.cluster_resources().get(resource, 0)
        slots = int(available // per_worker)
        self.workers = workers or min(slots, cases or slots)
        if not 0 < self.workers <= slots:
            if self._started_ray:
                ray.shutdown()
            if not slots:
                raise InputError(
                    f"the Ray cluster has {available:g} {resource}s, too few for one worker of {per_worker} "
                    "(see --device and --threads)"
                )
            raise InputError(
                f"the Ray cluster has room for {slots} workers of {per_worker} {resource} each, "
                f"not {self.workers} (see --workers and --threads)"
            )
        actor_class = ray.remote(max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)(CaseRunner)
        self._actors = [
            actor_class.options(num_cpus=self.threads, num_gpus=gpus).remote(settings, self.threads)
            for _ in range(self.workers)
        ]
        self._idle = list(self._actors)
        self._running: dict[Any, tuple[Any, Case]] = {}  # ObjectRef -> (actor, case)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def has_room(self) -> bool:
        return bool(self._idle)

    def submit(self, case: Case) -> None:
        actor = self._idle.pop()
        self._running[actor.run.remote(case)] = (actor, case)

    def wait(self, timeout: float) -> list[CaseResult]:
        """The cases finished within `timeout` seconds (maybe none)."""
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        results = []
        for ref in ready:
            actor, case = self._running.pop(ref)
            self._idle.append(actor)
            try:
                results.append(self._ray.get(ref))
            except self._ray.exceptions.RayActorError as error:
                reason = f"its Ray worker died {MAX_TASK_RETRIES + 1} times while running it ({type(error).__name__})"
                results.append(CaseResult(case.case_id, "failed", 0.0, "ray", error=reason))
            except self._ray.exceptions.RayError as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                results.append(CaseResult(case.case_id, "failed", 0.0, "ray", error=f"Ray error: {type(error).__name__}: {first_line}"))
        return results

    def close(self, now: bool = False) -> None:
        """Release the actors (and the local Ray this engine started); `now` or not, nothing is left
        to finish: the driver only closes once no case is in flight, unless stopping at once."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._running.clear()
        if self._started_ray:
            self._ray.shutdown()
