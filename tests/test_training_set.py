"""Training-set manifests: the format `annotate export` writes and `train` reads."""

from __future__ import annotations

import json
import shutil

import pytest

from medsam2.errors import InputError
from medsam2.io.training_set import TrainingCase, file_sha256, read_manifest, write_manifest


def test_manifest_round_trip_checks_files_and_checksums(tmp_path, ct_lesion_cases):
    root = tmp_path / "set"
    (root / "cases").mkdir(parents=True)
    copied = shutil.copy(ct_lesion_cases[0], root / "cases" / "lesion.npz")
    case = TrainingCase("lesion", "cases/lesion.npz", "cases/lesion.npz", {"1": "lesion"}, file_sha256(copied), round=1)
    write_manifest(root, [case])
    moved = shutil.move(root, tmp_path / "moved")
    read_root, cases = read_manifest(moved)
    assert read_root == moved and cases == [case]
    assert cases[0].mask_path(read_root).is_file()
    (moved / "cases" / "lesion.npz").write_bytes(b"changed")
    with pytest.raises(InputError, match="does not match its recorded checksum"):
        read_manifest(moved / "manifest.json")


@pytest.mark.parametrize(
    "document, message",
    [
        ({"format": "other"}, "not a medsam2 training-set manifest"),
        ({"format": "medsam2-training-set", "version": 9, "cases": []}, "version 9 is not supported"),
        ({"format": "medsam2-training-set", "version": 1, "cases": []}, "lists no cases"),
        ({"format": "medsam2-training-set", "version": 1, "cases": [{"id": "a", "image": "x.nii.gz", "mask": "y.nii.gz"}]}, "image file .* is missing"),
        ({"format": "medsam2-training-set", "version": 1, "cases": [{"id": "a", "picture": "x"}]}, "case 1: "),
    ],
)
def test_bad_manifests_give_one_line_errors(tmp_path, document, message):
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=message) as raised:
        read_manifest(tmp_path)
    assert "\n" not in str(raised.value)


def test_paths_must_stay_inside_the_folder(tmp_path):
    with pytest.raises(InputError, match="must be relative"):
        write_manifest(tmp_path, [TrainingCase("a", "../escape.nii.gz", "m.nii.gz")])
    assert not (tmp_path / "manifest.json").exists()
