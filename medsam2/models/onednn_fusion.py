"""Modules run as oneDNN Graph partitions: LiteMedSAM's bfloat16 fast path on CPU.

In eager mode each operator reads and writes its whole activation: on LiteMedSAM's encoder, whose
first stage works on 256x256 maps of 256 channels, the element-wise work between the matrix products
(GELU, LayerNorm, residual adds, softmax) cost as much as the products themselves. oneDNN Graph
fuses such chains into single kernels. torch reaches it through TorchScript: the module is traced and
frozen for fixed input shapes, and TorchScript's profiling executor hands the graph to oneDNN on the
second run. That takes seconds and no C++ compiler, unlike `torch.compile`, which spent 15-35 s per
process here for a similar speed.

TorchScript is deprecated since torch 2.13 in favour of `torch.compile`, whose CPU path needs a C++
compiler at run time; should a later torch drop it, `fused_module` falls back to the eager module.

The fusion switch is process-wide in torch; it is on only while a module is prepared and restored
after: a prepared module keeps its fused plan for the shapes it was prepared with.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from medsam2.models.onnx_runtime import check, first_line

log = logging.getLogger(__name__)

# The profiling executor records shapes on the first run and optimises the graph on the second.
RUNS_TO_PLAN = 2


def fused_module(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], tolerance: float
) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    """`module` (eval mode, CPU) fused by oneDNN Graph for inputs shaped and typed like
    `example_inputs`, checked against the module itself within `tolerance` (absolute). Where
    tracing, fusion or the check fails, the module itself, with a warning: slower, same results."""
    try:
        with torch.no_grad(), _onednn_fusion(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's, known (module docstring)
            # check_trace would trace twice more (seconds); `check` below compares outputs instead
            fused = torch.jit.freeze(torch.jit.trace(module, example_inputs, check_trace=False))
            for _ in range(RUNS_TO_PLAN):
                fused(*example_inputs)
        check(torch.no_grad()(fused), module, example_inputs, tolerance)
    except Exception as error:  # an optional speed-up: any failure leaves the eager module
        log.warning("%s: oneDNN fusion unavailable, running it unfused: %s", type(module).__name__, first_line(error))
        return module
    return fused


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    enabled = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(enabled)
