"""Fine-tune the embedded LiteMedSAM on two shared CT lesion cases; score the third before and after.

Scores are the one-box 3D propagation of `medsam2 segment` (the ground-truth box on the slice where
the lesion is largest, nothing else; the same procedure as benchmarks/accuracy_ct_lesion.py and as
training's validation), 3D DSC. The held-out case is the honest figure; the two
training cases are an overfit check (fine-tuning should at least fit the data it saw). Prints
training throughput. The schedule is small by default so that it runs on a shared CPU; make it
longer (and train the image encoder) where there is time or a GPU:

    python benchmarks/finetune_ct_lesion.py                      # CPU: 30 steps of 4, frozen encoder
    python benchmarks/finetune_ct_lesion.py --device cuda --steps 400 --batch-size 16 --lr 5e-5 --train-image-encoder

On CUDA training runs under bf16 autocast (the trainer's `precision: auto`) and both evaluations run
on the GPU too. Throughput is printed twice: over the whole `train` call (data reading, model
loading, CUDA start-up included) and over the optimizer steps alone (from train_log.csv, the first
logged window left out as warm-up).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from common import checked_device, ct_lesion_cases
from medsam2.engine.models import load_predictor
from medsam2.models.weights import bundled_lite_medsam_checkpoint, read_state_dict
from medsam2.train import config_from_dict, train
from medsam2.train.config import DataConfig
from medsam2.train.data import CaseFiles, load_case
from medsam2.train.validation import one_box_dice


class KeptEmbeddings:
    """A predictor whose slice embeddings are kept in `kept` (by slice content) and reused: with
    the image encoder frozen, the fine-tuned model's embeddings are the starting model's, so each
    slice is encoded once for both evaluations (checked in `main`)."""

    def __init__(self, predictor: Any, kept: dict[bytes, Any]) -> None:
        self.predictor, self.kept = predictor, kept

    def encode(self, slices: np.ndarray) -> list[Any]:
        missing = [s for s in slices if s.tobytes() not in self.kept]
        if missing:
            for image, embedding in zip(missing, self.predictor.encode(np.stack(missing))):
                self.kept[image.tobytes()] = embedding
        return [self.kept[s.tobytes()] for s in slices]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)


def one_box_dsc(paths: list[Path], model: str, kept: dict[bytes, Any], device: str) -> list[float]:
    """3D DSC of each case's lesion from one GT box, with `model`."""
    predictor = KeptEmbeddings(load_predictor(model, device=device), kept)
    scores = []
    for path in tqdm(paths, desc=f"one-box 3D DSC ({Path(model).name})", unit="case", leave=False):
        case = load_case(CaseFiles(path.stem, path, path, "gts"), DataConfig(), context=None)
        (dsc,) = one_box_dice(case, predictor).values()
        scores.append(dsc)
    return scores


def same_image_encoder(first: Path, second: Path) -> bool:
    weights = [read_state_dict(path) for path in (first, second)]
    encoder = [key for key in weights[0] if key.startswith("image_encoder.")]
    return bool(encoder) and all(torch.equal(weights[0][key], weights[1][key]) for key in encoder)


def steady_samples_per_s(run: Path) -> float | None:
    """Median samples/s of the logged windows after the first (which holds the warm-up)."""
    with (run / "train_log.csv").open(newline="") as handle:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(handle) if row["samples_per_s"]]
    return statistics.median(rates[1:]) if len(rates) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-image-encoder", action="store_true", help="also fine-tune the image encoder (slow on CPU)")
    parser.add_argument("--held-out", type=int, default=2, help="index (0-2) of the case kept for evaluation")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    if args.device != "auto":
        checked_device(args.device)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = args.device if args.device.startswith("cuda") else "cuda" if cuda else "cpu"
    if cuda:
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, training in bf16 autocast")
    cases = ct_lesion_cases()
    held_out = cases[args.held_out]
    training = [case for case in cases if case != held_out]
    print(f"training on {', '.join(c.name for c in training)}; held out: {held_out.name}")
    print(f"schedule: {args.steps} steps x {args.batch_size} slices, lr {args.lr:g}, image encoder {'trained' if args.train_image_encoder else 'frozen'}")
    began = time.perf_counter()
    kept: dict[bytes, Any] = {}
    before = one_box_dsc(cases, "lite-medsam", kept, device)
    evaluation = time.perf_counter() - began

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "run"
        config = config_from_dict(
            {
                "model": {"freeze_image_encoder": not args.train_image_encoder},
                "data": {"sources": [{"npz": str(path)} for path in training], "val_fraction": 0.0},
                "optimizer": {"lr": args.lr, "warmup_steps": max(1, args.steps // 10)},
                "training": {"steps": args.steps, "batch_size": args.batch_size, "device": device},
                "output": {"dir": str(out), "checkpoint_every": args.steps, "log_every": max(1, args.steps // 10), "tensorboard": False},
            }
        )
        started = time.perf_counter()
        summary = train(config, progress=True)
        seconds = time.perf_counter() - started
        steady = steady_samples_per_s(out)
        if not same_image_encoder(bundled_lite_medsam_checkpoint(), summary.model_path):
            kept = {}  # the encoder trained: the embeddings are the fine-tuned model's own
        began = time.perf_counter()
        after = one_box_dsc(cases, str(summary.model_path), kept, device)
        evaluation += time.perf_counter() - began

    print(f"\ntraining: {seconds:.0f} s, {args.steps * args.batch_size / seconds:.2f} samples/s (data reading and embedding included), final loss {summary.train_loss:.4f}")
    if steady is not None:
        print(f"optimizer steps alone: {steady:.1f} samples/s (median of the logged windows after the first)")
    print(f"evaluation before and after: {evaluation:.0f} s")
    print(f"{'case':<38} {'role':<9} {'DSC before':>10} {'DSC after':>10}")
    for path, dsc_before, dsc_after in zip(cases, before, after):
        role = "held out" if path == held_out else "training"
        print(f"{path.name:<38} {role:<9} {dsc_before:10.3f} {dsc_after:10.3f}")
    seen = [i for i, path in enumerate(cases) if path != held_out]
    print(f"{'mean of the two training cases':<48} {np.mean([before[i] for i in seen]):10.3f} {np.mean([after[i] for i in seen]):10.3f}")

if __name__ == "__main__":
    main()
