"""The confidence-weighted bank with SAM 2.1's memory attention: one-prompt segmentation, and
ordinary propagation through a stack with `memory="confidence"` beside SAM 2's recent-frames bank.

The network has random weights (no published checkpoint is downloaded) and a small input size:
these tests check the bank's documented behaviour, not accuracy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medsam2.engine.memory import MemoryBank
from medsam2.engine.memory_policy import ConfidenceBankConfig, ConfidenceMemoryBank
from medsam2.engine.one_prompt import (
    OnePromptConfig,
    OnePromptSegmenter,
    TargetResult,
    reference_mask_from_box,
)
from medsam2.engine.sam2_predictor import SAM2Predictor, memory_propagation
from medsam2.engine.session import Session
from medsam2.engine.tracking import PropagationConfig
from medsam2.models.sam2 import SAM2Config, SAM2Model

SIZE = 48


@pytest.fixture(scope="module")
def predictor() -> SAM2Predictor:
    torch.manual_seed(0)
    model = SAM2Model(SAM2Config(image_size=64))
    with torch.no_grad():  # an object-score head that says "present", so masks are not all empty
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(5.0)
    return SAM2Predictor(model.eval(), "cpu")


def disc_image(centre: tuple[int, int], brightness: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 8**2
    return np.where(disc, brightness, 30 + xx).astype(np.uint8), disc


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    reference, mask = disc_image((20, 20), 220)
    targets = [disc_image(centre, brightness)[0] for centre, brightness in [((14, 30), 200), ((30, 16), 240), ((24, 24), 180), ((34, 34), 210)]]
    return reference, mask, targets


def config(threshold: float, capacity: int = 16) -> OnePromptConfig:
    return OnePromptConfig(bank=ConfidenceBankConfig(capacity=capacity, min_confidence=threshold, attend=2))


@pytest.fixture(scope="module")
def capped(predictor, images) -> tuple[OnePromptSegmenter, list[TargetResult]]:
    """Every result admitted (threshold 0) to a bank of two."""
    reference, mask, targets = images
    segmenter = OnePromptSegmenter(reference, mask, predictor, config(0.0, capacity=2))
    return segmenter, segmenter.segment(targets, progress=False)


@pytest.fixture(scope="module")
def closed(predictor, images) -> tuple[OnePromptSegmenter, list[TargetResult]]:
    """No result admitted (threshold 1): every target attends to the reference alone."""
    reference, mask, targets = images
    segmenter = OnePromptSegmenter(reference, mask, predictor, config(1.0))
    return segmenter, segmenter.segment(targets, progress=False)


def test_the_bank_keeps_the_reference_and_the_k_most_confident_results(capped, closed, images):
    segmenter, results = capped
    assert [r.mask.shape for r in results] == [(SIZE, SIZE)] * len(images[2])
    assert len(segmenter.bank.conditioning) == 1
    kept = sorted(entry.confidence for entry in segmenter.bank.bank.entries)
    assert kept == sorted(r.confidence for r in results)[-2:]
    assert len(closed[0].bank.bank) == 0


def test_without_admissions_the_order_changes_nothing(predictor, images, closed):
    reference, mask, targets = images
    backward = OnePromptSegmenter(reference, mask, predictor, config(1.0)).segment(targets[::-1], progress=False)
    for one, other in zip(closed[1], backward[::-1]):
        assert np.array_equal(one.mask, other.mask) and one.confidence == other.confidence


def test_a_result_depends_on_earlier_admissions_only(predictor, images, capped, closed):
    reference, mask, targets = images
    # The bank of two is not full before the third target: these are the results of an unbounded bank.
    first = capped[1][:3]
    other = OnePromptSegmenter(reference, mask, predictor, config(0.0)).segment(targets[:2] + targets[3:], progress=False)
    for one, two in zip(first[:2], other[:2]):
        assert np.array_equal(one.mask, two.mask) and one.confidence == two.confidence
    # The admitted memories are attended to: the third target comes out otherwise than with none.
    alone = closed[1]
    assert first[0].confidence == alone[0].confidence
    assert first[2].confidence != alone[2].confidence


def test_a_reference_box_becomes_the_reference_mask(predictor, images):
    reference, _, _ = images
    mask = reference_mask_from_box(reference, (10, 10, 30, 30), predictor)
    assert mask.shape == (SIZE, SIZE) and mask.any()


# -- ordinary propagation with the confidence-weighted bank -----------------------------------------


def propagated(predictor: SAM2Predictor, config: PropagationConfig | None) -> tuple[dict[int, np.ndarray], Session]:
    """Logits per slice of a disc drifting through 5 slices, followed forward from slice 0."""
    frames = np.stack([disc_image((24, 14 + 3 * z), 220)[0] for z in range(5)])
    session = Session(frames, predictor, config)
    session.add_prompt(0, 1, box=(4, 14, 26, 34))
    logits: dict[int, np.ndarray] = {}
    session.propagate("forward", progress=False, on_slice=lambda _, index, values: logits.setdefault(index, values))
    return logits, session


def test_propagation_with_the_confidence_bank_parts_from_the_recent_bank_only_where_the_banks_differ(predictor):
    recent, session = propagated(predictor, None)
    assert isinstance(session.tracker.banks[0], MemoryBank)
    confidence = memory_propagation("confidence")
    assert confidence is not None and confidence.memory == "confidence"
    weighted, session = propagated(predictor, replace(confidence, bank=ConfidenceBankConfig(min_confidence=0.0, capacity=2)))
    bank = session.tracker.banks[0]
    assert isinstance(bank, ConfidenceMemoryBank)
    assert sorted(weighted) == sorted(recent) == list(range(1, 5))
    assert len(bank.bank) == 2  # bounded by its capacity, not by the slices seen
    closed, session = propagated(predictor, replace(confidence, bank=ConfidenceBankConfig(min_confidence=1.0)))
    assert len(session.tracker.banks[0].bank) == 0
    # Slice 1 sees the anchor alone under every policy.
    assert np.array_equal(weighted[1], recent[1]) and np.array_equal(closed[1], recent[1])
    # Slice 2: the open bank holds what the recent bank holds (the anchor and slice 1; only the
    # anchor's pointer counts one slice away instead of two); the closed bank refused slice 1.
    open_gap, closed_gap = (float(np.abs(logits[2] - recent[2]).max()) for logits in (weighted, closed))
    assert open_gap < closed_gap / 10, (open_gap, closed_gap)
