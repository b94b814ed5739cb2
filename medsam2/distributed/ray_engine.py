"""The Ray engine: one actor per GPU or per CPU slot of a Ray cluster, each holding its models.

Ray places the actors on the cluster's nodes, restarts an actor whose process dies and retries
the case it was running on the restarted actor (`MAX_TASK_RETRIES` times); the driver keeps one
case in flight per actor, so the manifest is streamed, never submitted whole. Every node needs
medsam2 installed and the manifest's paths (images, prompt files, ground truth, the output folder)
at the same place, as on a shared file system. Needs ``pip install 'medsam2[distributed]'``.
"""

from __future__ import annotations

import logging
import socket
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


def check_ray_address(address: str) -> None:
    """An `InputError` unless something listens at a HOST:PORT address ("auto" and ray:// are Ray's)."""
    host, separator, port = address.rpartition(":")
    if address == "auto" or "://" in address:
        return
    if not separator or not port.isdigit():
        raise InputError(f"--ray-address {address!r}: expected HOST:PORT (the head node's GCS port, 6379 by default), auto or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error})") from None


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
            if address is not None:
                check_ray_address(address)
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise InputError(f"--ray-address {address}: cannot connect to a Ray cluster ({error})") from None
        self.threads = threads or 1
        gpus = 0 if settings.device == "cpu" else 1
        resource, per_worker = ("GPU", 1) if gpus else ("CPU", self.threads)
        slots = int(ray.cluster_resources().get(resource, 0) // per_worker)
        self.workers = workers or min(slots, cases or slots)
        if not 0 < self.workers <= slots:
            if self._started_ray:
                ray.shutdown()
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
