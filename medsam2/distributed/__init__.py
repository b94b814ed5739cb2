"""Batch segmentation at scale: a manifest of cases, resumable runs, local or Ray engines.

    cases = read_manifest(Path("cases.csv"))
    settings = BatchSettings(out_dir=Path("results"))
    report = run_batch(cases, settings, lambda n: LocalEngine(settings, workers=2, cases=n))
"""

from medsam2.distributed.local import LocalEngine
from medsam2.distributed.manifest import Case, read_manifest
from medsam2.distributed.ray_engine import RayEngine
from medsam2.distributed.runner import BatchReport, Engine, run_batch
from medsam2.distributed.worker import BatchSettings, CaseResult

__all__ = [
    "BatchReport",
    "BatchSettings",
    "Case",
    "CaseResult",
    "Engine",
    "LocalEngine",
    "RayEngine",
    "read_manifest",
    "run_batch",
]
