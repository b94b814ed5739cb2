"""SAM 2.1's per-frame memory step alone: time, host time and (on a GPU) kernels per tracked frame.

One step is what `SAM2Model.track` does for a frame without prompts: memory tokens, memory
attention, mask decoder, memory encoder. It runs here with a full memory bank (the prompted frame,
6 recent frames, 16 object pointers), on one frame's features, back to back, in each form the
predictor can take, after the reference:

- Meta: `sam2==1.1.0`'s `track_step` on frame 16 of a run prompted on frame 0 (the same bank), as
  its video predictor runs it, eagerly;
- eager: ours, launched one by one from Python (what `SAM2Predictor` runs by default);
- compiled: `torch.compile` (CUDA graphs on a GPU), the weights as graph inputs;
- compiled, frozen: what `SAM2Predictor(compiled=True)` runs: the weights frozen into the code,
  and on a GPU in bf16 the cross-attention split over blocks of keys;
- compiled, frozen, whole attention: the same with the cross-attention in one piece (GPU, bf16 only).

Reported per step: wall time over many steps back to back (the host queues the next step while
the GPU runs this one, so this is the larger of the two below), the host's time in the call, and on
a GPU the kernels launched and their summed time (torch.profiler). Random hiera-tiny weights (speed
does not depend on them) at 512 px.

    python benchmarks/sam2_step.py                       # the device present; bf16 on CUDA
    python benchmarks/sam2_step.py --device cpu --steps 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sam2_speed import build_meta

from medsam2.engine.sam2_predictor import frozen_compile
from medsam2.models.sam2 import SAM2Config, SAM2Model, SelectedMemory
from common import checked_device, image_size

Step = Callable[[], object]


def full_bank(model: SAM2Model, device: str) -> SelectedMemory:
    """A bank as it is from the 17th tracked frame on: 7 spatial memories, 16 pointers."""
    config, grid = model.config, model.config.feature_size
    return SelectedMemory(
        torch.randn(config.num_maskmem, 1, 64, grid, grid, device=device).to(torch.bfloat16),
        torch.arange(config.num_maskmem, device=device),
        torch.randn(1, config.max_obj_ptrs, 256, device=device),
        torch.arange(config.max_obj_ptrs, device=device) / (config.max_obj_ptrs - 1),
    )


def meta_step(image_size: int, device: str) -> Step:
    """Meta's step on a frame with a full bank: frame 16 of a run prompted on frame 0, every earlier
    frame's memory a copy of the prompted frame's."""
    meta = build_meta("tiny", image_size, device).eval()
    image = torch.randn(1, 3, image_size, image_size, device=device)
    _, features, positions, sizes = meta._prepare_backbone_features(meta.forward_image(image))
    masks = torch.randn(1, 1, image_size, image_size, device=device)
    scores = torch.ones(1, 1, device=device)
    memory, memory_position = meta._encode_new_memory(features, sizes, masks, scores, is_mask_from_pts=True)
    frame = {
        "maskmem_features": memory.to(torch.bfloat16),  # as Meta's video predictor stores them
        "maskmem_pos_enc": memory_position,
        "obj_ptr": torch.randn(1, 256, device=device),
        "object_score_logits": scores,
    }
    bank = {"cond_frame_outputs": {0: frame}, "non_cond_frame_outputs": dict.fromkeys(range(1, 16), frame)}
    return lambda: meta.track_step(16, False, features, positions, sizes, None, None, bank, num_frames=100)


def measure(step: Step, steps: int, device: str, top_kernels: int = 0) -> tuple[dict[str, float], str]:
    """Per-step figures of `step` after three untimed calls (compilation, CUDA-graph recording) and,
    on a GPU, a table of the `top_kernels` kernels that take the most GPU time (else empty)."""
    on_gpu = device.startswith("cuda")

    def run(count: int) -> float:
        """Host seconds spent inside the calls."""
        inside = 0.0
        for _ in range(count):
            start = time.perf_counter()
            result = step()
            inside += time.perf_counter() - start
            del result  # a CUDA graph's outputs must be gone before its next replay
        return inside

    run(3)
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    host = run(steps)
    if on_gpu:
        torch.cuda.synchronize()
    figures = {"ms/step": (time.perf_counter() - start) / steps * 1e3, "host ms/call": host / steps * 1e3}
    table = ""
    if on_gpu:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            run(steps)
            torch.cuda.synchronize()
        kernels = [event for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
        figures["GPU ms/step"] = sum(event.device_time for event in kernels) / steps / 1e3
        figures["kernels/step"] = len(kernels) / steps
        if top_kernels:
            table = profile.key_averages().table(sort_by="device_time_total", row_limit=top_kernels, max_name_column_width=70)
    return figures, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--image-size", type=image_size, default=512)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per form (default 200)")
    parser.add_argument("--top-kernels", type=int, default=15, help="on a GPU, list the compiled frozen step's N costliest kernels (0: none)")
    args = parser.parse_args()
    checked_device(args.device)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(0)
    model = SAM2Model(SAM2Config(image_size=args.image_size), device=args.device).to(args.device).eval()
    bank = full_bank(model, args.device)
    mode = "reduce-overhead" if args.device.startswith("cuda") else None
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    split_applies = args.device.startswith("cuda") and precision == "bf16"
    track = model.track  # (features, bank) -> output
    forms: list[tuple[str, Callable[[], Callable]]] = [
        ("eager", lambda: track),
        ("compiled", lambda: torch.compile(track, mode=mode)),
        ("compiled, frozen", lambda: frozen_compile(track, mode)),
    ]
    if split_applies:
        forms.append(("compiled, frozen, whole attention", lambda: frozen_compile(track, mode)))

    print(f"{args.device}, {precision}, hiera-tiny at {args.image_size} px, full bank, {args.steps} steps per form")
    print("| step | ms/step | host ms/call | GPU ms/step | kernels/step |")
    print("|---|---|---|---|---|")
    kernel_table = ""
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, args.image_size, args.image_size, device=args.device))
        with autocast:
            report("Meta (sam2 1.1.0)", measure(meta_step(args.image_size, args.device), args.steps, args.device)[0])
        for name, build in forms:
            whole = name.endswith("whole attention")
            for layer in model.memory_attention.layers:
                layer.cross_attn_image.split_keys = not whole
            torch._dynamo.reset()  # each compiled form compiles afresh, with its own settings
            step = build()
            top = args.top_kernels if name == "compiled, frozen" else 0
            with autocast:
                figures, table = measure(lambda: step(features, bank), args.steps, args.device, top)
            report(name, figures)
            if table:
                kernel_table = f"\nThe compiled frozen step's costliest kernels, {args.steps} steps:\n{table}"
    print(kernel_table, end="")


def report(name: str, figures: dict[str, float]) -> None:
    gpu = [f"{figures['GPU ms/step']:.3f}", f"{figures['kernels/step']:.0f}"] if "kernels/step" in figures else ["-", "-"]
    print(f"| {name} | {figures['ms/step']:.3f} | {figures['host ms/call']:.3f} | {' | '.join(gpu)} |", flush=True)


if __name__ == "__main__":
    main()
