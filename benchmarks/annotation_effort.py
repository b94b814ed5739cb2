"""Annotation effort on the shared CT lesion cases: a scripted annotator vs manual contouring.

The annotator (`medsam2.annotate.simulate`) works through an annotation project exactly as a person
would through the project API (every lease, prompt, correction and accept is recorded in the
database): with the expert mask as the truth in its head it boxes the lesion on its largest slice,
then fixes the worst slice (a box from the truth there; then up to 3 clicks placed as SAM's click
simulation places them, in the largest error region; the slice drawn by hand when clicks do not
help; erased where the lesion does not reach) until the 3D Dice reaches 0.90 or 10 corrections.
`--clicks 0` is the annotator without clicks (box, then drawing). Its interactions and
slices touched, read back from the project's effort report, are compared with fully manual
slice-by-slice contouring, counted as one interaction per lesion slice of the expert mask.
"pre vs acc" is the Dice between the pre-segmentation (here the mask of the first box) and the
accepted mask; "Dice 1st" and "final" are the 3D Dice against the expert mask after the first
interaction and at the end. MedSAM2 reports a reduction of more than 85% on its (larger) lesions;
these lesions span 7-9 slices.

    python benchmarks/annotation_effort.py [--cases N] [--clicks N] [--db postgresql://...] [--out effort/]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ct_lesion_cases

from medsam2.annotate import (
    Predictors,
    WorkSession,
    effort_report,
    import_cases,
    init_project,
    lease_next,
    write_report,
)
from medsam2.annotate.simulate import SimulationConfig, annotate_with_truth
from medsam2.errors import InputError
from medsam2.io.masks import stored_array

MEDSAM2_REDUCTION = 0.85  # "more than 85%" (MedSAM2 paper, CT/MRI lesions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="project.db", help="database of the temporary project (default: SQLite)")
    parser.add_argument("--target", type=float, default=0.90, help="3D Dice at which the annotator accepts")
    parser.add_argument("--cap", type=int, default=10, help="most corrections per case")
    parser.add_argument("--clicks", type=int, default=3, help="clicks tried on a slice after its box before drawing it")
    parser.add_argument("--out", type=Path, help="also write the effort report (CSV + PNG) here")
    parser.add_argument("--cases", type=int, help="how many of the shared CT lesion cases (default: all)")
    args = parser.parse_args()
    try:
        config = SimulationConfig(target_dice=args.target, max_corrections=args.cap, clicks_per_slice=args.clicks)
    except InputError as error:
        parser.error(str(error))
    predictors = Predictors()
    with tempfile.TemporaryDirectory() as folder:
        project = init_project(Path(folder) / "effort", args.db)
        import_cases(project, ct_lesion_cases()[: args.cases], progress=False)
        simulated, seconds = {}, {}
        while (case := lease_next(project, "simulated")) is not None:
            started = time.perf_counter()
            work = WorkSession(project, case.name, "simulated", predictors)
            truth = stored_array(work.model.volume, "gts")
            simulated[case.name] = annotate_with_truth(work, truth, config)
            seconds[case.name] = time.perf_counter() - started
        report = effort_report(project)
        if args.out:
            for path in write_report(report, args.out):
                print(f"wrote {path}")
        project.close()

    # Manual contouring draws every lesion slice of the expert mask, one interaction each (the
    # project's own report, which has no expert mask, counts the accepted mask's slices instead).
    print(
        f"{'case':<32} {'manual':>6} {'ours':>5} {'boxes':>5} {'clicks':>6} {'drawn':>5} {'touched':>7} {'reduction':>9} {'pre vs acc':>10} "
        f"{'Dice 1st':>8} {'final':>6} {'seconds':>7}"
    )
    for effort in report.cases:
        run = simulated[effort.case]
        pre_vs_acc = "-" if effort.initial_dice is None else f"{effort.initial_dice:.3f}"
        print(
            f"{effort.case:<32} {run.manual_slices:6d} {effort.interactions:5d} {run.count('box'):5d} {clicks(run):6d} "
            f"{run.count('drawn') + run.count('erased'):5d} {effort.slices_touched:7d} "
            f"{1 - effort.interactions / run.manual_slices:9.0%} {pre_vs_acc:>10} {run.dice_after[0]:8.3f} "
            f"{run.final_dice:6.3f} {seconds[effort.case]:7.1f}"
        )
    manual = sum(run.manual_slices for run in simulated.values())
    ours = sum(effort.interactions for effort in report.cases)
    touched = sum(effort.slices_touched for effort in report.cases)
    boxes = sum(run.count("box") for run in simulated.values())
    drawn = sum(run.count("drawn") + run.count("erased") for run in simulated.values())
    all_clicks = sum(clicks(run) for run in simulated.values())
    print(f"{'all':<32} {manual:6d} {ours:5d} {boxes:5d} {all_clicks:6d} {drawn:5d} {touched:7d} {1 - ours / manual:9.0%}")
    for name, run in simulated.items():  # what each interaction was (kind@slice), and the 3D Dice on the way
        print(f"{name}: {', '.join(f'{kind}@{index}' for kind, index in run.steps)}; Dice {' '.join(f'{v:.3f}' for v in run.dice_after)}")
    reached = sum(run.reached_target for run in simulated.values())
    print(f"target Dice {config.target_dice} reached on {reached}/{len(simulated)} cases (cap {config.max_corrections} corrections, {config.clicks_per_slice} clicks per slice)")
    print(f"reduction vs manual contouring (one interaction per lesion slice of the expert mask): ours {1 - ours / manual:.0%}, MedSAM2 reports > {MEDSAM2_REDUCTION:.0%}")


def clicks(run) -> int:
    return run.count("click+") + run.count("click-")


if __name__ == "__main__":
    main()
