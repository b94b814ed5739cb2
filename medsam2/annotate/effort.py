"""Annotation effort per case and per round, and the report across rounds (CSV tables + PNG plot).

For a finished case:

- interactions: the annotator's prompts, hand corrections and undos (taking a case, accepting it
  and the model's pre-segmentation are not counted);
- slices touched: the distinct slices those interactions were on;
- seconds: the time annotators held the case: each lease from its taking to its release or the
  decision, and a lease left to run out to its holder's last action (a case back in the queue, or
  held by nobody, costs no one effort; several annotators' leases add up);
- initial Dice: between the pre-segmentation (the imported mask, the model's mask from the hints,
  or from the annotator's first prompt) and the accepted mask;
- manual slices: the slices the accepted mask covers, i.e. the interactions fully manual
  slice-by-slice contouring takes (one per slice), the baseline MedSAM2 reports its savings against.

A round's reduction is ``1 - interactions / manual slices`` summed over its accepted cases.
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import defer

from medsam2.annotate.project import Project
from medsam2.annotate.schema import EFFORT_KINDS, CaseRow, CaseState, InteractionKind, InteractionRow, PresegSource, RoundRow
from medsam2.io.atomic import atomic_write_bytes, atomic_write_text

FINISHED = (CaseState.ACCEPTED.value, CaseState.REJECTED.value)


@dataclass(frozen=True)
class CaseEffort:
    case: str
    round: int
    state: str
    annotators: str  # who interacted, comma-separated
    interactions: int
    prompts: int
    corrections: int
    undos: int
    slices_touched: int
    seconds: float | None
    initial_dice: float | None
    preseg_source: str | None  # `PresegSource`: what the mask initial_dice compares came from
    manual_slices: int | None


@dataclass(frozen=True)
class RoundEffort:
    round: int
    model_version: str
    accepted: int
    rejected: int
    interactions: int  # over accepted cases
    manual_slices: int  # over accepted cases
    mean_interactions: float | None
    mean_slices_touched: float | None
    mean_seconds: float | None
    mean_initial_dice: float | None
    reduction: float | None  # 1 - interactions / manual_slices


@dataclass(frozen=True)
class EffortReport:
    cases: list[CaseEffort]
    rounds: list[RoundEffort]


def effort_report(project: Project) -> EffortReport:
    """The effort of every finished case and of every round that has one."""
    with project.transaction() as session:
        rounds = {r.id: r for r in session.scalars(select(RoundRow).where(RoundRow.project_id == project.id))}
        cases = list(
            session.scalars(
                select(CaseRow).where(CaseRow.project_id == project.id, CaseRow.state.in_(FINISHED)).order_by(CaseRow.id)
            )
        )
        history = defaultdict(list)
        for interaction in session.scalars(
            select(InteractionRow)
            .join(CaseRow, InteractionRow.case_id == CaseRow.id)
            .where(CaseRow.project_id == project.id, CaseRow.state.in_(FINISHED))
            .order_by(InteractionRow.id)
            .options(defer(InteractionRow.mask))
        ):
            history[interaction.case_id].append(interaction)
    per_case = [case_effort(case, rounds[case.round_id].number, history[case.id]) for case in cases]
    per_round = [
        round_effort(row, [c for c in per_case if c.round == row.number])
        for row in sorted(rounds.values(), key=lambda r: r.number)
        if any(c.round == row.number for c in per_case)
    ]
    return EffortReport(per_case, per_round)


def case_effort(case: CaseRow, round_number: int, history: list[InteractionRow]) -> CaseEffort:
    effort = [i for i in history if i.kind in {k.value for k in EFFORT_KINDS}]
    count = {kind: sum(i.kind == kind.value for i in effort) for kind in EFFORT_KINDS}
    return CaseEffort(
        case=case.name,
        round=round_number,
        state=case.state,
        annotators=",".join(sorted({i.annotator for i in effort} | {case.finished_by})),
        interactions=len(effort),
        prompts=count[InteractionKind.PROMPT],
        corrections=count[InteractionKind.CORRECTION],
        undos=count[InteractionKind.UNDO],
        slices_touched=len({i.slice_index for i in effort}),
        seconds=held_seconds(history),
        initial_dice=case.initial_dice,
        preseg_source=case.preseg_source,
        manual_slices=case.mask_slices,
    )


# What ends a lease on the spot; any other lease ends by running out.
LEASE_ENDS = {InteractionKind.RELEASE.value, InteractionKind.ACCEPT.value, InteractionKind.REJECT.value}


def held_seconds(history: list[InteractionRow]) -> float | None:
    """Seconds annotators held the case, over the case's history in order (None: never leased).
    A lease that ran out is only known to have lasted to its holder's last action: counting it to
    its expiry would add a whole lease of nobody's work, and from the first lease to the decision
    would add the time the case sat in the queue."""
    total, leased, span = 0.0, False, None  # span: [holder, taken at, their latest action]
    for event in history:
        if event.kind == InteractionKind.LEASE.value:
            if span is not None:  # the previous lease ran out before this one was taken
                total += (span[2] - span[1]).total_seconds()
            leased = True
            span = [event.annotator, event.created_at, event.created_at]
        elif span is not None and event.annotator == span[0]:
            span[2] = event.created_at
            if event.kind in LEASE_ENDS:
                total += (span[2] - span[1]).total_seconds()
                span = None
    if span is not None:
        total += (span[2] - span[1]).total_seconds()
    return total if leased else None


def round_effort(row: RoundRow, cases: list[CaseEffort]) -> RoundEffort:
    accepted = [c for c in cases if c.state == CaseState.ACCEPTED.value]
    interactions = sum(c.interactions for c in accepted)
    manual = sum(c.manual_slices or 0 for c in accepted)

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None

    return RoundEffort(
        round=row.number,
        model_version=row.model_version,
        accepted=len(accepted),
        rejected=len(cases) - len(accepted),
        interactions=interactions,
        manual_slices=manual,
        mean_interactions=mean([c.interactions for c in accepted]),
        mean_slices_touched=mean([c.slices_touched for c in accepted]),
        mean_seconds=mean([c.seconds for c in accepted]),
        # the model's pre-segmentations only: an imported mask says nothing of the round's model
        mean_initial_dice=mean([c.initial_dice for c in accepted if c.preseg_source != PresegSource.MASK.value]),
        reduction=1 - interactions / manual if manual else None,
    )


def write_report(report: EffortReport, folder: Path) -> list[Path]:
    """``cases.csv``, ``rounds.csv`` and ``effort.png`` in `folder`, each written atomically."""
    folder = Path(folder)
    written = [
        atomic_write_text(folder / "cases.csv", as_csv(report.cases, CaseEffort)),
        atomic_write_text(folder / "rounds.csv", as_csv(report.rounds, RoundEffort)),
    ]
    if report.rounds:
        written.append(plot_rounds(report.rounds, folder / "effort.png"))
    return written


def as_csv(rows: list, row_type: type) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in fields(row_type)], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})
    return text.getvalue()


def plot_rounds(rounds: list[RoundEffort], path: Path) -> Path:
    """Write `render_rounds_png` to `path` (atomically)."""
    return atomic_write_bytes(path, render_rounds_png(rounds))


def render_rounds_png(rounds: list[RoundEffort]) -> bytes:
    """A PNG of the interactions per accepted case against manual contouring, and of the
    pre-segmentation's Dice, round by round."""
    # The object API, not pyplot: no global figure state, safe in a server's threads.
    from matplotlib.figure import Figure

    # A model version can be a long checkpoint path: broken into short lines under its round.
    labels = [f"round {r.round}\n" + "\n".join(textwrap.wrap(r.model_version, 18, break_on_hyphens=False)) for r in rounds]
    x = np.arange(len(rounds))
    figure = Figure(figsize=(4 + 2.2 * len(rounds), 4), layout="constrained")
    effort_axes, dice_axes = figure.subplots(1, 2)
    manual = [r.manual_slices / r.accepted if r.accepted else 0 for r in rounds]
    ours = [r.mean_interactions or 0 for r in rounds]
    effort_axes.bar(x - 0.2, manual, 0.4, label="manual (1 per slice)", color="#bbbbbb")
    effort_axes.bar(x + 0.2, ours, 0.4, label="with the model", color="#1f77b4")
    for position, r in enumerate(rounds):
        if r.reduction is not None:
            # Signed change of effort against manual: "-35%" is 35% fewer interactions.
            effort_axes.annotate(f"{-100 * r.reduction:+.0f}%", (position + 0.2, ours[position]), ha="center", va="bottom")
    effort_axes.set_xticks(x, labels, fontsize=8)
    effort_axes.set_ylabel("interactions per accepted case")
    effort_axes.set_title("Annotation effort")
    effort_axes.set_ylim(0, 1.5 * max([*manual, *ours, 1]))  # room above the bars for the legend
    effort_axes.legend(fontsize=8, loc="upper left")  # one column: two would overrun a one-round plot
    dice_axes.plot(x, [np.nan if r.mean_initial_dice is None else r.mean_initial_dice for r in rounds], "o-", color="#d62728")
    dice_axes.set_xticks(x, labels, fontsize=8)
    dice_axes.set_xlim(-0.5, len(rounds) - 0.5)  # rounds where they stand on the bars' axes
    dice_axes.set_ylim(0, 1)
    dice_axes.set_ylabel("Dice, pre-segmentation vs accepted")
    dice_axes.set_title("Model quality")
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()
