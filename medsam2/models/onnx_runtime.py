"""Modules run by ONNX Runtime: the optional fast path of LiteMedSAM on CPU.

ONNX Runtime fuses element-wise work (GELU, LayerNorm, biases) with the matrix products around it,
plans its memory ahead and does not busy-wait when other processes share the cores. On the
project's 2-core CPU a whole volume (encoder and box decoder) ran about 10% faster than with the
folded torch modules (`benchmarks/speed_cpu.py --torch`), with outputs within 1e-4 of torch's.

A module's graph is exported with `torch.onnx` (which needs the `onnx` and `onnxscript` packages)
for fixed input shapes, once per architecture, code, torch and ONNX Runtime version; it is checked
against torch and cached under `cache_dir()/onnx`. Each load writes the module's own weights into
the cached graph, so a fine-tuned checkpoint reuses it. Without `onnxruntime`, or when the export
or the check fails, `onnx_module` returns None and the caller keeps torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medsam2.io.atomic import atomic_write_bytes
from medsam2.models.weights import cache_dir

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# A graph whose outputs differ from torch's by more than this (absolute) is not used: float32
# rounding alone stays near 1e-5 on LiteMedSAM's encoder and decoder.
TOLERANCE = 1e-4
# Cached graphs kept per module: the current one and the one before (another installed version of
# medsam2 sharing the cache); older ones are deleted when a new graph is written.
GRAPHS_KEPT_PER_NAME = 2


class OnnxModule:
    """A module's forward on fixed-shape float32 inputs, through an ONNX Runtime session.

    The session holds a copy of the weights taken when it was made: after changing the module's
    weights, make a new one."""

    def __init__(self, model: bytes, input_names: list[str]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting after a run: torch or another session runs next on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_names = input_names

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {name: x.detach().float().contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        return [torch.from_numpy(output) for output in self.session.run(None, feeds)]


def onnx_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], name: str) -> OnnxModule | None:
    """`module` (in eval mode, on the CPU) on ONNX Runtime for inputs shaped like `example_inputs`,
    its graph exported on first use and cached as `name-KEY.onnx`; None where ONNX Runtime is
    missing or does not reproduce torch on `example_inputs`."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    input_names = [f"input_{i}" for i in range(len(example_inputs))]
    key = architecture_key(module, example_inputs, onnxruntime.__version__)
    path = cache_dir() / "onnx" / f"{name}-{key}.onnx"
    if path.is_file():
        try:
            return OnnxModule(with_weights(onnx.load(path), module), input_names)
        except Exception as error:  # onnxruntime's and onnx's errors derive from Exception only
            log.warning("%s: %s; exporting %s again", path, first_line(error), name)
    log.info("exporting %s to ONNX (once per model architecture)", name)
    try:
        graph = export(module, example_inputs, input_names)
        runner = OnnxModule(with_weights(graph, module), input_names)
        check(runner, module, example_inputs)
    except Exception as error:  # any failure of this optional path leaves the torch path
        log.warning("%s: ONNX Runtime unavailable, using torch: %s", name, first_line(error))
        return None
    with contextlib.suppress(OSError):  # a read-only cache only costs the next start an export
        atomic_write_bytes(path, graph.SerializeToString())
        remove_stale_graphs(path.parent, name)
    return runner


def remove_stale_graphs(folder: Path, name: str, keep: int = GRAPHS_KEPT_PER_NAME) -> None:
    """Delete all but the `keep` newest cached graphs of `name`: every new version of the package (or
    of torch or ONNX Runtime) exports anew under a new key, and the old graphs would pile up."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{32}}\.onnx")
    graphs = [path for path in folder.iterdir() if pattern.fullmatch(path.name)]
    graphs.sort(key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for stale in graphs[keep:]:
        stale.unlink(missing_ok=True)


def architecture_key(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], runtime_version: str) -> str:
    """Hash of what a checked graph depends on: parameter names and shapes, input shapes, the source
    of the module's classes and of this exporter, and the versions of torch (the exporter) and ONNX
    Runtime (the kernels that passed the check)."""
    digest = hashlib.sha256(f"{torch.__version__}\0{runtime_version}\0".encode())
    for x in example_inputs:
        digest.update(f"{tuple(x.shape)}\0".encode())
    sources = {inspect.getsourcefile(type(m)) for m in module.modules() if not type(m).__module__.startswith("torch.")}
    sources.add(__file__)
    for source in sorted(s for s in sources if s):
        digest.update(Path(source).read_bytes())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    return digest.hexdigest()[:32]


def export(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str]) -> onnx.ModelProto:
    """The ONNX graph of `module` for inputs of these shapes. The exporter's own optimisation is
    off: it would fold weights into unnamed constants, which `with_weights` could not replace
    (ONNX Runtime folds them when it loads the graph)."""
    with _quiet_exporter():
        program = torch.onnx.export(
            module, example_inputs, None, dynamo=True, input_names=input_names, optimize=False, verbose=False
        )
    return program.model_proto


def with_weights(graph: onnx.ModelProto, module: nn.Module) -> bytes:
    """`graph` serialised with `module`'s weights in place of those it was exported with.

    The exporter names each parameter and buffer the graph reads after its key in the state dict;
    the others (BatchNorm counters, a decoder's unused prompt branches) are not in the graph."""
    from onnx import numpy_helper

    state = module.state_dict()
    for initializer in graph.graph.initializer:
        if initializer.name in state:
            weight = state[initializer.name].detach().cpu().contiguous().numpy()
            initializer.CopyFrom(numpy_helper.from_array(weight, initializer.name))
    return graph.SerializeToString()


def check(
    runner: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    tolerance: float = TOLERANCE,
) -> None:
    """RuntimeError unless `runner` reproduces `module` within `tolerance` on the example inputs
    and on the same flipped, which a graph that baked in its example (data-dependent code the
    exporter traced through) would miss."""
    for inputs in (example_inputs, tuple(x.flip(-1) for x in example_inputs)):
        with torch.inference_mode():
            expected = module(*inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        actual = runner(*inputs)
        actual = [actual] if isinstance(actual, torch.Tensor) else list(actual)
        if [tuple(x.shape) for x in actual] != [tuple(x.shape) for x in expected]:
            raise RuntimeError("its outputs are not shaped like torch's")
        difference = max(float((a.float() - e.float()).abs().max()) for a, e in zip(actual, expected))
        if not difference <= tolerance:
            raise RuntimeError(f"its outputs differ from torch's by {difference:.2e}")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (skipped torchvision ops, deprecations inside torch.export)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
