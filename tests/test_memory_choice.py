"""The memory-bank choice (`recent` or `confidence`) through every front end: `medsam2 segment` on a
volume and on a video, `medsam2 batch` (option and manifest column), the web server's sessions and
the web page.

A random-weight SAM 2.1 checkpoint runs with MedSAM2's settings (no published checkpoint is
downloaded): the masks mean nothing, but which bank ran shows. A slice next to the prompted one
attends to the prompted slice alone under either bank, so both banks give it the same mask; the
slices beyond attend to what each bank chose, and the masks part."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_cli import assert_one_line_error, run
from test_sam2_engine import moving_disk, random_sam2
from playwright.sync_api import Browser
from test_video_io import write_container
from test_web_e2e import IDLE, browser, serving, session_info, start_page  # noqa: F401 (browser: a fixture)

from medsam2.distributed import BatchSettings, read_manifest
from medsam2.distributed.results import fingerprints
from medsam2.distributed.worker import CaseRunner
from medsam2.engine.models import memory_banks
from medsam2.engine.prompts import box_from_mask
from medsam2.errors import InputError
from medsam2.io import load_image
from medsam2.io.masks import load_mask
from medsam2.io.video import load_video_mask
from medsam2.models.weights import bundled_lite_medsam_checkpoint
from medsam2.server import ServerSettings, create_app
from medsam2.server.security import CLIENT_HEADER

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BANKS = ("recent", "confidence")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """`--model` for a random-weight SAM 2.1 hiera-tiny checkpoint with MedSAM2's settings (512 px)."""
    path = tmp_path_factory.mktemp("model") / "random_sam2.pt"
    torch.save({"model": random_sam2(64).state_dict()}, path)
    return f"medsam2={path}"


@pytest.fixture(scope="module")
def volume_case(tmp_path_factory, ct_lesion_cases: list[Path]) -> tuple[Path, str]:
    """Three slices of a shared CT lesion case from its largest lesion slice on, and the
    ground-truth box on the first as `--box`."""
    arrays = dict(np.load(ct_lesion_cases[1]))
    truth = arrays["gts"] > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    for name in ("imgs", "gts"):
        arrays[name] = arrays[name][key : key + 3]
    path = tmp_path_factory.mktemp("volume") / "three_slices.npz"
    np.savez_compressed(path, **arrays)
    return path, "0," + ",".join(f"{v:g}" for v in box_from_mask(truth[key]))


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, model: str, volume_case: tuple[Path, str]) -> dict[str, np.ndarray]:
    """`medsam2 segment` of the volume with each bank: the written label maps."""
    case, box = volume_case
    folder = tmp_path_factory.mktemp("segmented")
    labels = {}
    for bank in BANKS:
        result = run("segment", case, "--model", model, "--box", box, "--memory", bank, "-o", folder / f"{bank}.nii.gz")
        assert result.exit_code == 0, result.output
        written, scan = load_image(folder / f"{bank}.nii.gz"), load_image(case)
        assert written.spacing == pytest.approx(scan.spacing) and written.origin == pytest.approx(scan.origin)
        labels[bank] = written.array
    return labels


def assert_banks_part_only_beyond_the_next_slice(labels: dict[str, np.ndarray], prompted: int) -> None:
    recent, confidence = labels["recent"], labels["confidence"]
    assert recent.shape == confidence.shape
    assert set(np.unique(confidence)) <= {0, 1} and all(mask.any() for mask in confidence)
    near = slice(max(prompted - 1, 0), prompted + 2)
    assert np.array_equal(confidence[near], recent[near])
    assert not np.array_equal(confidence[near.stop :], recent[near.stop :])


def test_segment_runs_a_volume_with_the_chosen_bank(segmented: dict[str, np.ndarray]) -> None:
    assert segmented["confidence"].shape[0] == 3
    assert_banks_part_only_beyond_the_next_slice(segmented, prompted=0)


def test_segment_runs_a_video_with_the_chosen_bank(tmp_path: Path, model: str) -> None:
    clip = write_container(tmp_path / "clip.avi", moving_disk(4), "ffv1", "gray", Fraction(10))
    labels = {}
    for bank in BANKS:
        output = tmp_path / f"{bank}.npz"
        result = run("segment", clip, "--model", model, "--frame-box", "1,14,20,36,44", "--memory", bank, "-o", output)
        assert result.exit_code == 0, result.output
        labels[bank] = load_video_mask(output)
    assert labels["confidence"].shape == (4, 64, 64)
    assert_banks_part_only_beyond_the_next_slice(labels, prompted=1)
    # LiteMedSAM has no memory: the same request is a one-line error, and nothing is written.
    refused = run("segment", clip, "--frame-box", "0,14,20,36,44", "--memory", "confidence", "-o", tmp_path / "lite.npz")
    assert_one_line_error(refused, "memory bank 'confidence': only memory models (SAM 2.1 / MedSAM2) have one")
    assert not (tmp_path / "lite.npz").exists()


def test_batch_takes_the_bank_from_the_manifest_or_the_command(
    tmp_path: Path, model: str, volume_case: tuple[Path, str], segmented: dict[str, np.ndarray]
) -> None:
    case, box = volume_case
    manifest = tmp_path / "cases.csv"
    manifest.write_text(
        f'id,image,box,model,memory\nsam2,{case},"{box}",,confidence\nlite,{case},"{box}",lite-medsam,confidence\n'
        f'default,{case},"{box}",,\n'
    )
    sam2, lite, default = read_manifest(manifest)
    assert (sam2.memory, lite.memory, default.memory) == ("confidence", "confidence", None)
    settings = BatchSettings(out_dir=tmp_path / "out", model=model)
    # The bank shapes the masks: a row's result is recorded under it.
    assert fingerprints([default], settings) != fingerprints([default], BatchSettings(out_dir=tmp_path / "out", model=model, memory="confidence"))

    runner = CaseRunner(settings)
    done = runner.run(sam2)
    assert done.status == "ok", done.error
    assert np.array_equal(load_mask(settings.out_dir / done.output).array, segmented["confidence"])
    failed = runner.run(lite)
    assert failed.status == "failed" and failed.error == "memory bank 'confidence': only memory models (SAM 2.1 / MedSAM2) have one"

    manifest.write_text(f"image,memory\n{case},oldest\n")
    with pytest.raises(InputError, match="line 2: memory 'oldest': choose recent or confidence"):
        read_manifest(manifest)
    manifest.write_text(f'image,box\n{case},"{box}"\n')
    result = run("batch", manifest, "--out", tmp_path / "refused", "--memory", "oldest")
    assert_one_line_error(result, "memory bank 'oldest': choose recent or confidence")
    assert not (tmp_path / "refused").exists()


def test_the_banks_a_model_offers_follow_its_family(model: str) -> None:
    bare_path = model.partition("=")[2]  # no preset named: the checkpoint's tensors decide
    assert memory_banks(model) == memory_banks(bare_path) == BANKS
    assert memory_banks("lite-medsam") == memory_banks(str(bundled_lite_medsam_checkpoint())) == ()


def test_a_server_session_opens_with_the_chosen_bank(tmp_path: Path, model: str, volume_case: tuple[Path, str]) -> None:
    case, _ = volume_case
    data = tmp_path / "data"
    data.mkdir()
    (data / case.name).write_bytes(case.read_bytes())
    opening = {"case": f"data/{case.name}", "memory": "confidence"}
    client_id = "memory-choice-test-client"
    for server_model in (model, "lite-medsam"):
        app = create_app(ServerSettings(data_dir=data, model=server_model))
        with TestClient(app, base_url="http://127.0.0.1", headers={CLIENT_HEADER: client_id}) as client:
            assert client.get("/api/info").json()["memory_banks"] == ([] if server_model == "lite-medsam" else list(BANKS))
            if server_model == model:
                opened = client.post("/api/sessions", json=opening)
                assert opened.status_code == 201, opened.text
                assert opened.json()["memory"] == "confidence"
                session = app.state.server.sessions.get(client_id, opened.json()["id"])
                assert session.engine is not None and session.engine.config.memory == "confidence"
                described = client.get("/api/info").json()["model_description"]  # once loaded: what the preset came to
                assert described == f"SAM 2.1 hiera-tiny at 512 px with medsam2's settings, from {model.partition('=')[2]}"
                continue
            # LiteMedSAM has no memory: it refuses when the case is opened, in one line.
            refused = client.post("/api/sessions", json=opening)
            assert refused.status_code == 400 and refused.json() == {
                "error": "memory bank 'confidence': only memory models (SAM 2.1 / MedSAM2) have one"
            }
            assert client.post("/api/sessions", json={**opening, "memory": "oldest"}).status_code == 422
            plain = client.post("/api/sessions", json={"case": opening["case"]})
            assert plain.status_code == 201 and plain.json()["memory"] is None


def test_the_page_offers_the_banks_of_a_memory_model_only(
    tmp_path: Path, model: str, volume_case: tuple[Path, str], browser: Browser  # noqa: F811
) -> None:
    case, _ = volume_case
    (tmp_path / case.name).write_bytes(case.read_bytes())
    one_case = "document.querySelector('#case-select').options.length === 1"
    with serving(ServerSettings(data_dir=tmp_path, model=model)) as url:
        page, problems = start_page(browser, url, one_case)
        assert page.is_visible("#memory-choice")
        assert page.eval_on_selector_all("#memory option", "options => options.map((o) => o.value)") == list(BANKS)
        page.select_option("#memory", "confidence")
        page.click("#open-case")
        page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
        assert session_info(page)["memory"] == "confidence"
        assert problems == []
        page.close()
    with serving(ServerSettings(data_dir=tmp_path)) as url:  # LiteMedSAM: no memory, nothing to choose
        page, problems = start_page(browser, url, one_case)
        assert not page.is_visible("#memory-choice")
        page.click("#open-case")
        page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
        assert session_info(page)["memory"] is None and problems == []
        page.close()
