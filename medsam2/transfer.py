"""Copies between the host and a GPU that do not make the host wait for the GPU.

A GPU runs the work the host has queued while the host prepares the next: a copy that waits for
the queue to drain leaves the GPU idle until the host has queued work again. A copy from pageable
host memory may wait for the work queued before it; one to pageable memory always does. Through
pinned (page-locked) memory both are queued like kernels. On a CPU these are plain copies.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, queued without a wait (torch's
    pinned-memory cache keeps the staging buffer until the copy has run)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """A device tensor on its way to the host: the copy is queued when made, `result` waits for it."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._done: torch.cuda.Event | None = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = tensor.cpu()

    def result(self) -> torch.Tensor:
        """The tensor on the host, once the copy has run."""
        if self._done is not None:
            self._done.synchronize()
        return self._host
