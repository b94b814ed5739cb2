"""Cases per second of `medsam2 batch` with 1 and 2 workers, local and Ray, beside the reference.

The reference is what a user does without `medsam2 batch`: one `medsam2 segment` process per case,
one after another (each loading the model). Every configuration segments the same manifest of the
shared CT lesion cases (one ground-truth box on the key slice each; the cases repeat under new ids
to reach --cases; --slices crops each to that many slices around its key slice, for a quick run)
into a fresh output folder, timed from the command's start to its exit, so
process start-up, model loading and (for Ray) starting a local Ray instance are counted. Ray runs
on a local ``ray.init()``, the same code path as a cluster, without the network. The masks of
every configuration are compared with the reference's.

    python benchmarks/batch_scaling.py [--cases 4] [--slices 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ct_lesion_cases
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image
from medsam2.io.masks import stored_array

COMMAND = [sys.executable, "-m", "medsam2.cli"]
CONFIGURATIONS = {  # name -> batch options; threads so that every configuration uses both cores
    "local, 1 worker x 2 threads": ["--engine", "local", "--workers", "1", "--threads", "2"],
    "local, 2 workers x 1 thread": ["--engine", "local", "--workers", "2", "--threads", "1"],
    "ray, 1 actor x 2 threads": ["--engine", "ray", "--workers", "1", "--threads", "2"],
    "ray, 2 actors x 1 thread": ["--engine", "ray", "--workers", "2", "--threads", "1"],
}


def key_slice(truth: np.ndarray) -> int:
    return int(np.argmax(truth.reshape(truth.shape[0], -1).sum(axis=1)))


def key_slice_box(path: Path) -> str:
    truth = stored_array(load_image(path), "gts")
    index = key_slice(truth)
    return ",".join(str(int(v)) for v in (index, *box_from_mask(truth[index] > 0)))


def write_slab(path: Path, slices: int, folder: Path) -> Path:
    """`slices` slices of a MedSAM npz around its key slice (pixels, ground truth, spacing and
    direction kept; the origin moved to the first kept slice)."""
    volume = load_image(path)
    truth = stored_array(volume, "gts")
    first = min(max(0, key_slice(truth) - slices // 2), volume.shape[0] - slices)
    target = folder / f"{path.stem}_slab{slices}.npz"
    np.savez_compressed(
        target,
        imgs=volume.array[first : first + slices],
        gts=truth[first : first + slices],
        spacing=np.asarray(volume.spacing),
        direction=np.asarray(volume.direction),
        origin=volume.index_to_world([first, 0, 0])[0],
    )
    return target


def write_manifest(folder: Path, count: int, slices: int | None) -> list[dict]:
    sources = [write_slab(path, slices, folder) for path in ct_lesion_cases()] if slices else ct_lesion_cases()
    boxes = {path: key_slice_box(path) for path in sources}
    rows = [
        {"id": f"case{number:02d}", "image": str(path), "box": boxes[path]}
        for number, path in ((n, sources[n % len(sources)]) for n in range(count))
    ]
    with (folder / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "box"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of `command`'s processes (those it waited for: not Ray's, which
    its own daemons start and reap); the CPU figure is the one other work on a shared machine does
    not inflate."""
    start, cpu = time.perf_counter(), children_cpu_seconds()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, children_cpu_seconds() - cpu


def segs(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["segs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4, help="cases in the manifest (the 3 CT lesion cases, repeated)")
    parser.add_argument("--slices", type=int, default=None, help="crop each case to this many slices around its key slice (default: whole scans, 13-16 slices)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to Ray's servers from a benchmark
    with tempfile.TemporaryDirectory(prefix="batch_scaling_") as temporary:
        folder = Path(temporary)
        rows = write_manifest(folder, args.cases, args.slices)
        print(f"{len(rows)} CT lesion cases ({args.slices or '13-16'} slices of 512x512 each), {os.cpu_count()} CPUs, "
              f"load average before: {os.getloadavg()[0]:.2f}")
        reference = folder / "reference"
        print(f"\n{'configuration':<40} {'seconds':>8} {'CPU s':>7} {'cases/s':>8} {'vs reference':>13}  masks as reference")
        base, base_cpu = np.sum(
            [
                timed([*COMMAND, "segment", row["image"], "--box", row["box"], "-o", str(reference / f"{row['id']}.npz")])
                for row in rows
            ],
            axis=0,
        )
        print(f"{'reference: `medsam2 segment` per case':<40} {base:8.1f} {base_cpu:7.1f} {len(rows) / base:8.3f} {1:12.2f}x", flush=True)
        for name, options in CONFIGURATIONS.items():
            out = folder / name.replace(" ", "").replace(",", "_")
            seconds, cpu = timed([*COMMAND, "batch", str(folder / "cases.csv"), "--out", str(out), "--no-progress", *options])
            identical = all(
                np.array_equal(segs(out / "masks" / f"{row['id']}.npz"), segs(reference / f"{row['id']}.npz")) for row in rows
            )
            verdict = "identical" if identical else "DIFFERENT"
            cpu_shown = "n/a" if "ray" in options else f"{cpu:.1f}"
            print(f"{name:<40} {seconds:8.1f} {cpu_shown:>7} {len(rows) / seconds:8.3f} {base / seconds:12.2f}x  {verdict}", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}; CPU s: of the command's own processes (n/a for Ray, whose workers its daemons start)")


if __name__ == "__main__":
    main()
