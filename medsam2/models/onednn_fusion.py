"""Modules run as oneDNN Graph partitions: LiteMedSAM's fast path on CPU, in float32 and bfloat16.

In eager mode each operator reads and writes its whole activation: on LiteMedSAM's encoder, whose
first stage works on 256x256 maps of 256 channels, the element-wise work between the matrix products
(GELU, LayerNorm, residual adds, softmax) cost as much as the products themselves in bfloat16, and a
good part of the time in float32. oneDNN Graph fuses such chains into single kernels: on the
project's 2-core CPU the float32 encoder ran 0.48 s a slice fused, 0.59 s unfused and 0.59 s on ONNX
Runtime (which medsam2 used before), within 5e-6 of torch; bfloat16 0.28 s fused, 0.41 s unfused.
torch reaches it through TorchScript: the module is traced and frozen for fixed input shapes, and
TorchScript's profiling executor hands the graph to oneDNN on the second run. That takes seconds and no C++ compiler, unlike `torch.compile`, which spent 15-35 s per
process here for a similar speed.

TorchScript is deprecated since torch 2.13 in favour of `torch.compile`, whose CPU path needs a C++
compiler at run time; should a later torch drop it, `fused_module` falls back to the eager module.

The fusion switch is process-wide in torch; it is on only while a module is prepared and restored
after: a prepared module keeps its fused plan for the shapes it was prepared with.

TorchScript keeps every traced graph, with the weights frozen into it, for the life of the process
(pytorch/pytorch#35600 and #96726, open): each fusion of LiteMedSAM's parts would hold on to about
350 MB for good, so a process that loads the model again and again (a notebook, the test suite, an
annotation server taking a new round's model) would grow until it is killed. Fused modules are
therefore made once per distinct weights, inputs and tolerance and shared (`fused_module`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from medsam2.errors import first_line

log = logging.getLogger(__name__)

# Fingerprint of (module, inputs, tolerance) -> what `fused_module` made of it; never emptied, since
# TorchScript would keep what an entry held anyway (module docstring).
_made: dict[str, Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]] = {}
_making = threading.Lock()


def fused_module(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], tolerance: float
) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    """`module` (eval mode, CPU) fused by oneDNN Graph for inputs shaped and typed like
    `example_inputs`. Where tracing or fusion fails, or the fused output on the example differs
    from the unfused one by more than `tolerance` (absolute), the module itself, with a warning:
    slower, same results.

    TorchScript's profiling executor runs the traced graph unfused on the first call, recording
    shapes, and fuses it for the second: the two outputs are the check, at no extra cost. (Tracing
    records one path through the module, which for LiteMedSAM's parts holds for every input of these
    shapes; tests compare the fused parts with the published reference on real slices.)

    The same weights, inputs and tolerance give the same object, fused once per process: TorchScript
    never frees a traced graph (module docstring)."""
    key = fingerprint(module, example_inputs, tolerance)
    with _making:
        if key in _made:
            return _made[key]
        made = _fuse(module, example_inputs, tolerance)
        if made is not module:  # a fallback is the caller's own module, not for sharing
            _made[key] = made
        return made


def fingerprint(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], tolerance: float) -> str:
    """A digest of everything a fused module is made from: the classes and plain settings (numbers,
    strings, dtypes) of the module and its submodules, their parameters and buffers (names, dtypes,
    layouts and values), the inputs' shapes, dtypes and layouts, and `tolerance`."""
    digest = hashlib.blake2b(f"tolerance {tolerance!r}".encode())
    for name, part in module.named_modules():
        settings = sorted((k, repr(v)) for k, v in vars(part).items() if isinstance(v, (bool, int, float, str, tuple, torch.dtype)))
        digest.update(f"{name} {type(part).__module__}.{type(part).__qualname__} {settings}".encode())
    for name, tensor in module.state_dict(keep_vars=True).items():
        tensor = tensor.detach()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)} {tensor.stride()}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for tensor in example_inputs:
        digest.update(f"input {tensor.dtype} {tuple(tensor.shape)} {tensor.stride()}".encode())
    return digest.hexdigest()


def _fuse(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], tolerance: float
) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    try:
        with torch.no_grad(), _onednn_fusion(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's, known (module docstring)
            # check_trace would trace twice more (seconds); the outputs are compared below instead
            fused = torch.jit.freeze(torch.jit.trace(module, example_inputs, check_trace=False))
            unfused_output = outputs(fused(*example_inputs))
            fused_output = outputs(fused(*example_inputs))
        difference = max(float((a.float() - e.float()).abs().max()) for a, e in zip(fused_output, unfused_output))
        if not difference <= tolerance:
            raise RuntimeError(f"its fused outputs differ from the unfused ones by {difference:.2e}")
    except Exception as error:  # an optional speed-up: any failure leaves the eager module
        log.warning("%s: oneDNN fusion unavailable, running it unfused: %s", type(module).__name__, first_line(error))
        return module
    return fused


def outputs(result: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else list(result)


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    enabled = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(enabled)
