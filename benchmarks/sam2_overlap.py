"""Would encoding frames on a second CUDA stream, alongside the memory step, make SAM 2.1 faster?

A compiled propagation runs the image encoder (a batch of 8 frames) and the per-frame memory step
one after the other on one stream, and the step's small kernels leave most of a GPU's
multiprocessors idle. This measures, on a GPU, both as CUDA graphs captured by hand (so that the
host's share is a graph launch, and what is timed is the GPU's), per tracked frame:

- encoder alone: one batch of 8 frames, divided by 8;
- step alone: the step with a full memory bank (as `benchmarks/sam2_step.py`);
- one stream: per chunk of 8 frames, the encoder's batch, then 8 steps, as the predictor runs now;
- two streams: the same, the encoder's batch on a second stream while the 8 steps run (the next
  chunk waits for it), which is what encoding the next chunk during this one's tracking would do.

Both are compiled and frozen as `SAM2Predictor(compiled=True)` compiles them, in bf16, with random
hiera-tiny weights (speed does not depend on them) at 512 px. If "two streams" comes close to the
larger of the two alone rather than their sum, the overlap is worth building into the predictor.

    python benchmarks/sam2_overlap.py            # a CUDA GPU only
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from sam2_step import full_bank, measure

from medsam2.engine.sam2_predictor import frozen_compile
from medsam2.models.sam2 import SAM2Config, SAM2Model
from common import image_size

BATCH = 8  # frames per encoder batch and per chunk of steps, as the predictor on a GPU


def capture(function: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """`function` compiled and warmed up on a side stream, then captured in a CUDA graph (whose
    outputs stay in the graph's own memory pool, rewritten by each replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=image_size, default=512)
    parser.add_argument("--chunks", type=int, default=50, help="timed chunks of 8 frames (default 50)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("sam2_overlap.py measures CUDA streams: it needs a CUDA GPU")

    torch.manual_seed(0)
    model = SAM2Model(SAM2Config(image_size=args.image_size), device="cuda").to("cuda").eval()
    bank = full_bank(model, "cuda")
    frames = torch.randn(BATCH, 3, args.image_size, args.image_size, device="cuda")
    encode, track = frozen_compile(model.encode_image, None), frozen_compile(model.track, None)
    # no autocast cache: weights cast during a capture would be freed while the graph still reads them
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        features = model.encode_image(frames[:1])
        encoder_graph = capture(lambda: encode(frames))
        step_graph = capture(lambda: track(features, bank))

    main_stream, side_stream = torch.cuda.current_stream(), torch.cuda.Stream()

    def steps() -> None:
        for _ in range(BATCH):
            step_graph.replay()

    def one_stream() -> None:
        encoder_graph.replay()
        steps()

    def two_streams() -> None:
        side_stream.wait_stream(main_stream)
        with torch.cuda.stream(side_stream):
            encoder_graph.replay()
        steps()
        main_stream.wait_stream(side_stream)

    chunks = {"encoder alone": encoder_graph.replay, "step alone": steps, "one stream (now)": one_stream, "two streams": two_streams}
    # wall time per chunk of 8 frames, back to back after untimed ones, as the step benchmark times a step
    figures = {name: measure(chunk, args.chunks, "cuda")[0]["ms/step"] / BATCH for name, chunk in chunks.items()}
    print(f"{torch.cuda.get_device_name()}, bf16, hiera-tiny at {args.image_size} px, full bank, CUDA graphs, {args.chunks} chunks of {BATCH}")
    print("| work per frame | ms/frame | frames/s |")
    print("|---|---|---|")
    for name, milliseconds in figures.items():
        print(f"| {name} | {milliseconds:.3f} | {1e3 / milliseconds:.0f} |")


if __name__ == "__main__":
    main()
