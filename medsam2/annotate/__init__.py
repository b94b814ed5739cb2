"""Human-in-the-loop annotation: projects, a database of cases and interactions, leases for several
annotators, the annotator's work on a case, effort metrics and the training-set export.

    project = init_project(Path("lesions"))                  # or open_project(...)
    import_cases(project, [Path("scans")])
    case = lease_next(project, "alice")
    work = WorkSession(project, case.name, "alice", Predictors())
    work.add_prompt(40, box=(120, 88, 160, 131))              # recorded, re-propagated
    work.accept()
    export_training_set(project, Path("trainset"))            # read by `medsam2 train`
"""

from medsam2.annotate.effort import CaseEffort, EffortReport, RoundEffort, effort_report, write_report
from medsam2.annotate.export import EXPORT_FORMATS, export_training_set
from medsam2.annotate.images import Relocation, relocate
from medsam2.annotate.importing import ImportSummary, import_cases
from medsam2.annotate.leases import lease_next, reject, release
from medsam2.annotate.project import Project, ProjectSettings, ProjectStatus, init_project, open_project
from medsam2.annotate.schema import CaseState, InteractionKind, PresegSource
from medsam2.annotate.work import CaseModel, Predictors, PresegmentReport, WorkSession, presegment, read_snapshot

__all__ = [
    "EXPORT_FORMATS",
    "CaseEffort",
    "CaseModel",
    "CaseState",
    "EffortReport",
    "ImportSummary",
    "InteractionKind",
    "Predictors",
    "PresegSource",
    "PresegmentReport",
    "Project",
    "ProjectSettings",
    "ProjectStatus",
    "Relocation",
    "RoundEffort",
    "WorkSession",
    "effort_report",
    "export_training_set",
    "import_cases",
    "init_project",
    "lease_next",
    "open_project",
    "presegment",
    "read_snapshot",
    "reject",
    "release",
    "relocate",
    "write_report",
]
