"""The confidence-weighted memory bank's rule: confidence, admission, keys, weighted selection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medsam2.engine.memory import MemoryEntry
from medsam2.engine.memory_policy import (
    ConfidenceBank,
    ConfidenceBankConfig,
    ConfidenceMemoryBank,
    image_key,
    prediction_confidence,
)
from medsam2.errors import InputError
from medsam2.models.sam2 import FrameFeatures, FrameOutput


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def test_confidence_is_predicted_iou_times_object_probability():
    assert prediction_confidence(0.9, 0.0) == pytest.approx(0.45)
    assert prediction_confidence(0.8, math.log(3.0)) == pytest.approx(0.8 * 0.75)
    assert prediction_confidence(0.9, 50.0) == pytest.approx(0.9)
    assert prediction_confidence(0.9, -50.0) == pytest.approx(0.0, abs=1e-12)
    # The decoder's IoU head can stray outside [0, 1]; confidence cannot.
    assert prediction_confidence(-0.1, 10.0) == 0.0
    assert prediction_confidence(1.2, 50.0) == pytest.approx(1.0)


def test_only_predictions_above_the_threshold_enter():
    bank: ConfidenceBank[str] = ConfidenceBank(ConfidenceBankConfig(min_confidence=0.6))
    key = unit(1, 0)
    assert not bank.offer("weak", 0.59, key)
    assert bank.offer("at threshold", 0.6, key)
    assert bank.offer("strong", 0.9, key)
    assert [entry.memory for entry in bank.entries] == ["at threshold", "strong"]


def test_a_full_bank_keeps_the_k_most_confident():
    bank: ConfidenceBank[str] = ConfidenceBank(ConfidenceBankConfig(capacity=3, min_confidence=0.0))
    key = unit(1, 0)
    for name, confidence in [("a", 0.5), ("b", 0.9), ("c", 0.7), ("d", 0.8), ("e", 0.4)]:
        bank.offer(name, confidence, key)
    assert sorted(entry.memory for entry in bank.entries) == ["b", "c", "d"]
    # A tie with the weakest entry does not replace it.
    assert not bank.offer("f", 0.7, key)
    assert sorted(entry.memory for entry in bank.entries) == ["b", "c", "d"]
    assert bank.offer("g", 0.71, key)
    assert sorted(entry.memory for entry in bank.entries) == ["b", "d", "g"]


def test_selection_weights_confidence_by_image_similarity():
    config = ConfidenceBankConfig(capacity=8, min_confidence=0.0, attend=2)
    bank: ConfidenceBank[str] = ConfidenceBank(config)
    target = unit(1, 0, 0)
    bank.offer("confident but unlike", 0.99, unit(0.1, 1, 0))  # w = 0.99 * 0.0995 = 0.098
    bank.offer("alike, less sure", 0.75, unit(1, 0.2, 0))  # w = 0.75 * 0.981 = 0.735
    bank.offer("alike, sure", 0.9, unit(1, 0.5, 0))  # w = 0.9 * 0.894 = 0.805
    bank.offer("opposite", 0.95, unit(-1, 0, 0))  # w = 0: never attended to
    weights = {entry.memory: bank.weight(entry, target) for entry in bank.entries}
    assert weights["alike, sure"] == pytest.approx(0.9 * 1 / math.sqrt(1.25))
    assert weights["opposite"] == 0.0
    assert [entry.memory for entry in bank.select(target)] == ["alike, sure", "alike, less sure"]

    everything = ConfidenceBank(ConfidenceBankConfig(capacity=8, min_confidence=0.0, attend=8))
    for entry in bank.entries:
        everything.offer(entry.memory, entry.confidence, entry.key)
    assert [e.memory for e in everything.select(target)] == ["alike, sure", "alike, less sure", "confident but unlike"]


def test_without_similarity_selection_follows_confidence_and_ties_keep_admission_order():
    bank: ConfidenceBank[str] = ConfidenceBank(ConfidenceBankConfig(min_confidence=0.0, attend=3, similarity=False))
    for name, confidence, key in [("x", 0.8, unit(0, 1)), ("y", 0.9, unit(-1, 0)), ("z", 0.8, unit(1, 0))]:
        bank.offer(name, confidence, key)
    assert [entry.memory for entry in bank.select(unit(1, 0))] == ["y", "x", "z"]


def test_image_key_ignores_brightness_offsets_and_scale_but_not_layout():
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 16, 32, 32, generator=generator)
    key = image_key(embedding, grid=4)
    assert key.shape == (16 * 4 * 4,)
    assert float(key.norm()) == pytest.approx(1.0)
    offset = embedding * 3.0 + torch.randn(1, 16, 1, 1, generator=generator)
    assert float(torch.dot(key, image_key(offset, grid=4))) == pytest.approx(1.0, abs=1e-5)
    flipped = image_key(embedding.flip(-1), grid=4)
    assert float(torch.dot(key, flipped)) < 0.5


def entry(frame: int) -> MemoryEntry:
    return MemoryEntry(frame, torch.full((1, 4, 2, 2), float(frame)), torch.full((1, 8), float(frame)))


PATTERN = torch.arange(64, dtype=torch.float32).reshape(8, 8) - 31.5  # zero mean: survives centring


def features(*direction: float) -> FrameFeatures:
    """Frame features whose image key points along `direction` (keys compare as these vectors do)."""
    top = torch.tensor(direction, dtype=torch.float32)[:, None, None] * PATTERN
    return FrameFeatures((torch.zeros(1), torch.zeros(1)), top[None])


def output(confidence: float) -> FrameOutput:
    """A decoded frame with this confidence: predicted IoUs of its three masks (the best counts)
    and an object score far above 0."""
    ious = torch.tensor([[confidence / 2, confidence, 0.0]])
    return FrameOutput(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 16, 16), ious, torch.zeros(1, 8), torch.tensor([[50.0]]))


def test_sam2_selection_puts_the_heaviest_memory_in_the_previous_frame_slot():
    reference = entry(-1)
    bank = ConfidenceMemoryBank([reference], ConfidenceBankConfig(min_confidence=0.5, attend=3), num_maskmem=7, max_obj_ptrs=16)
    assert not bank.add(entry(0), output(0.3), features(1, 0))  # below the threshold
    assert bank.add(entry(1), output(0.6), features(1, 0))  # w = 0.6
    assert bank.add(entry(2), output(0.9), features(1, 1))  # w = 0.636
    assert bank.add(entry(3), output(0.95), features(1, 0.1))  # w = 0.945
    assert bank.add(entry(4), output(0.55), features(1, 0))  # w = 0.55: fourth, left out
    assert bank.bank.entries[-1].confidence == pytest.approx(0.55)
    selection = bank.select(5, features(1, 0))
    frames = [int(memory.flatten()[0]) for memory, _ in selection.spatial]
    assert frames == [-1, 3, 2, 1]
    assert [slot for _, slot in selection.spatial] == [0, 6, 5, 4]
    assert [(int(pointer[0, 0]), distance) for pointer, distance in selection.pointers] == [(-1, 1), (3, 1), (2, 2), (1, 3)]
    assert selection.max_pointer_distance == 15
    # what the model takes: the same memories stacked in the same order, distances scaled by 15
    stacked = selection.for_model()
    assert stacked.spatial[:, 0].flatten(1)[:, 0].tolist() == [-1, 3, 2, 1]
    assert stacked.slots.tolist() == [0, 6, 5, 4]
    assert stacked.pointers[0, :, 0].tolist() == [-1, 3, 2, 1]
    assert torch.equal(stacked.pointer_positions, torch.tensor([1, 1, 2, 3]) / 15)


def test_sam2_bank_stays_bounded():
    bank = ConfidenceMemoryBank([entry(-1)], ConfidenceBankConfig(capacity=4, min_confidence=0.0), num_maskmem=7)
    for frame in range(50):
        bank.add(entry(frame), output(0.5 + frame / 100), features(1, frame / 10))
    assert len(bank.tensors()) == 2 * (1 + 4)
    assert sorted(banked.memory.frame for banked in bank.bank.entries) == [46, 47, 48, 49]


def test_bad_settings_are_one_line_input_errors():
    with pytest.raises(InputError, match="must be >= 1"):
        ConfidenceBankConfig(capacity=0)
    with pytest.raises(InputError, match="within 0..1"):
        ConfidenceBankConfig(min_confidence=1.5)
    with pytest.raises(InputError, match="exceeds the model's 6 recent-frame slots"):
        ConfidenceMemoryBank([], ConfidenceBankConfig(attend=7), num_maskmem=7)
