"""The REST API of `medsam2 serve` through FastAPI's test client: every route, security, uploads,
and real segmentations of the shared CT lesion cases with the real LiteMedSAM weights."""

from __future__ import annotations

import gc
import gzip
import io
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fastapi import APIRouter
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medsam2.cli.demo import key_slice_box
from medsam2.cli.main import app as cli_app
from medsam2.engine.api import prepare_slices
from medsam2.engine.prompts import Prompt
from medsam2.engine.session import Session
from medsam2.io import Volume, from_slices, load_image, save_mask
from medsam2.io.masks import stored_array
from medsam2.io.video import load_video
from medsam2.metrics import dice
from medsam2.server import ServerSettings, create_app, rle
from medsam2.server.security import CLIENT_HEADER
from conftest import ctrl_c_as_in_a_terminal

LOCAL = "http://127.0.0.1"
CASE_2 = "CT_Lesion_000002_03_01_035-047.npz"
CASE_1 = "CT_Lesion_000001_02_01_008-023.npz"
CASE_15 = "CT_Lesion_000015_01_01_081-093.npz"


CLIP_TRUTH = np.zeros((6, 96, 96), dtype=bool)  # a square moving right by 3 pixels a frame
for _t in range(6):
    CLIP_TRUTH[_t, 30:60, 20 + 3 * _t : 50 + 3 * _t] = True


def write_clip(path: Path, fps: int) -> None:
    """An MP4 of `CLIP_TRUTH`: a bright square on a dark background."""
    frames = np.full((*CLIP_TRUTH.shape, 3), 40, dtype=np.uint8)
    frames[CLIP_TRUTH] = (230, 200, 60)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, ct_lesion_cases: list[Path]) -> Path:
    """A data folder the tests may write into: the three shared cases (copied, as masks get saved
    next to them), a video clip, and things that are not cases."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "ct").mkdir()
    for case in ct_lesion_cases:
        shutil.copy(case, folder / "ct" / case.name)
    (folder / "video").mkdir()
    write_clip(folder / "video" / "clip.mp4", fps=10)
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".hidden.nii.gz").write_bytes(b"")
    (folder / "ct" / "old_mask.nii.gz").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory):
    app = create_app(ServerSettings(data_dir=data_dir, upload_dir=tmp_path_factory.mktemp("uploads")))
    with TestClient(app, base_url=LOCAL) as client:
        yield app, client


def on_worker(app, job):
    """Run `job(predictor)` on the app's inference worker, as the server runs its model calls (the
    tests' reference results thus use the server's own loaded model, without a second copy)."""
    return app.state.server.inference.workers[0].submit(job).result()


def key_box(case: Path) -> tuple[Prompt, np.ndarray]:
    """The usual one-box prompt (ground-truth box on the slice where the lesion is largest) and the truth."""
    truth = stored_array(load_image(case), "gts") > 0
    return key_slice_box(truth), truth


def open_case(client: TestClient, case_id: str) -> dict:
    response = client.post("/api/sessions", json={"case": case_id})
    assert response.status_code == 201, response.text
    return response.json()


def segment_through_api(client: TestClient, case_id: str, prompt: Prompt, direction: str) -> np.ndarray:
    session = open_case(client, case_id)
    sid = session["id"]
    response = client.post(f"/api/sessions/{sid}/prompts", json={"slice": prompt.slice_index, "box": list(prompt.box)})
    assert response.status_code == 200, response.text
    response = client.post(f"/api/sessions/{sid}/propagate", json={"direction": direction})
    assert response.status_code == 200, response.text
    assert response.json()["progress"]["state"] == "done"
    download = client.get(f"/api/sessions/{sid}/mask-file", params={"format": "nii.gz"})
    assert download.status_code == 200, download.text
    return sitk.GetArrayFromImage(read_nifti(download.content))


def read_nifti(content: bytes) -> sitk.Image:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.nii.gz"
        path.write_bytes(content)
        return sitk.ReadImage(str(path))


def nifti_bytes(array: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        return path.read_bytes()


# -- pure pieces -----------------------------------------------------------------------------------


def test_rle_is_column_major_coco_and_round_trips() -> None:
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # Column-major pixels: (0,0)=0 (1,0)=0 (0,1)=1 (1,1)=1 (0,2)=1 (1,2)=0.
    assert rle.encode(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    assert rle.encode(np.ones((2, 2), bool)) == {"size": [2, 2], "counts": [0, 4]}
    random = np.random.default_rng(0).random((37, 53)) > 0.6
    np.testing.assert_array_equal(rle.decode(rle.encode(random), (37, 53)), random)
    with pytest.raises(ValueError, match="add up to 5"):
        rle.decode({"size": [2, 3], "counts": [2, 3]}, (2, 3))


def test_settings_refuse_an_idle_limit_that_is_no_time() -> None:
    for idle in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="--idle-minutes .*: give a positive number of minutes"):
            ServerSettings(session_idle_seconds=idle).check()
    result = CliRunner().invoke(cli_app, ["serve", "--idle-minutes", "0", "--port", "0"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == "error: --idle-minutes 0: give a positive number of minutes", result.output


def test_settings_refuse_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing to listen beyond this machine without a token"):
        ServerSettings(host="0.0.0.0").check()
    ServerSettings(host="0.0.0.0", token="s3cret-token").check()
    ServerSettings(host="0.0.0.0", allow_unauthenticated=True).check()
    ServerSettings(host="::1").check()
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --host 0.0.0.0: refusing") and len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(cli_app, ["serve", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such folder" in result.stderr


def test_serve_reports_a_bad_model_or_a_taken_port_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--model", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "missing.pth" in result.stderr
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--compile"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --compile: LiteMedSAM has no memory step")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--port", str(port)])
    assert result.exit_code == 2 and f"--port {port}: cannot listen there" in result.stderr


def test_a_device_runs_its_jobs_one_at_a_time_on_one_thread(server) -> None:
    """Jobs sent by several users at once run one after another on the device's worker thread."""
    app, _ = server
    worker = app.state.server.inference.workers[0]
    spans: list[tuple[float, float, str]] = []

    def job(predictor) -> str:
        start = time.perf_counter()
        time.sleep(0.02)
        spans.append((start, time.perf_counter(), threading.current_thread().name))
        return type(predictor).__name__

    with ThreadPoolExecutor(4) as users:
        futures = list(users.map(lambda _: worker.submit(job), range(12)))
    assert {future.result() for future in futures} == {"LiteMedSAMPredictor"}
    spans.sort()
    assert len(spans) == 12 and len({name for _, _, name in spans}) == 1
    assert all(previous[1] <= following[0] for previous, following in zip(spans, spans[1:]))
    assert worker.pending == 0


# -- the API ---------------------------------------------------------------------------------------


def test_every_route_is_in_the_openapi_schema(server) -> None:
    _, client = server
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        "/api/info": {"get"},
        "/api/cases": {"get", "post"},
        "/api/sessions": {"get", "post"},
        "/api/sessions/{session_id}": {"get", "delete"},
        "/api/sessions/{session_id}/leave": {"post"},
        "/api/sessions/{session_id}/slices/{index}": {"get"},
        "/api/sessions/{session_id}/prompts": {"post"},
        "/api/sessions/{session_id}/prompts/{index}": {"delete"},
        "/api/sessions/{session_id}/undo": {"post"},
        "/api/sessions/{session_id}/objects/{obj_id}": {"patch", "delete"},
        "/api/sessions/{session_id}/propagate": {"post"},
        "/api/sessions/{session_id}/masks": {"get"},
        "/api/sessions/{session_id}/masks/{index}": {"get"},
        "/api/sessions/{session_id}/mask-file": {"get", "put"},
        "/api/sessions/{session_id}/load": {"post"},
        "/api/sessions/{session_id}/save": {"post"},
    }
    assert {path: set(methods) for path, methods in paths.items()} == expected
    for path, methods in paths.items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
    assert "application/octet-stream" in paths["/api/cases"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in paths["/api/sessions/{session_id}/mask-file"]["put"]["requestBody"]["content"]


def test_page_and_static_files(server) -> None:
    _, client = server
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<canvas id="view"' in page.text
    for asset in ("/static/viewer.js", "/static/api.js", "/static/viewer.css"):
        assert client.get(asset).status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.headers["content-type"] == "image/png" and icon.content.startswith(b"\x89PNG")


def test_head_answers_as_get_without_a_body(server) -> None:
    """HEAD on the page or a GET endpoint (`curl -I`, link checkers) was a 405: FastAPI's routes take
    only GET. It now answers as GET does, headers and all, without the body."""
    _, client = server
    for path in ("/", "/api/cases", "/api/info", "/api/sessions", "/openapi.json", "/static/viewer.js", "/api/no-such-route"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path


def test_api_docs_load_nothing_from_outside(server) -> None:
    """Swagger UI at /docs comes with its scripts and styles from this server, so it works offline
    (tests/test_web_e2e.py checks it renders in a browser)."""
    _, client = server
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert not re.findall(r"https?://", docs.text)
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert len(assets) == 3 and all(url.startswith("/docs-assets/") for url in assets), assets
    for url in assets:
        assert client.get(url).status_code == 200, url


def test_info_and_cases(server, tmp_path: Path) -> None:
    _, client = server
    info = client.get("/api/info").json()
    assert info["model"] == "lite-medsam" and info["devices"] == ["cpu"]
    assert info["upload_formats"][:3] == ["nii.gz", "nii", "nrrd"] and "mp4" in info["upload_formats"]
    assert info["window_presets"]["lung"] == [1500.0, -600.0] and len(info["label_colours"]) == 256
    assert info["label_colours"][:2] == [[230, 159, 0], [86, 180, 233]] and len({tuple(c) for c in info["label_colours"]}) == 256
    cases = client.get("/api/cases").json()
    expected = [f"data/ct/{name}" for name in (CASE_1, CASE_2, CASE_15)] + ["data/video/clip.mp4"]
    assert [case["id"] for case in cases] == expected
    assert all(case["source"] == "data" and case["can_save"] for case in cases)


def test_without_data_the_samples_of_installed_packages_are_offered() -> None:
    with TestClient(create_app(ServerSettings()), base_url=LOCAL) as client:
        cases = client.get("/api/cases").json()
        assert [case["id"] for case in cases] == ["sample/synthetic_lesion", "sample/mni152_t1", "sample/ct_small"]
        assert not any(case["can_save"] for case in cases)
        session = open_case(client, "sample/ct_small")
        assert session["kind"] == "image" and session["shape"] == [1, 128, 128]
        assert session["intensity"]["kind"] == "window" and "lung" in session["window_presets"]
        lung = client.get(f"/api/sessions/{session['id']}/slices/0", params={"window": "lung"})
        soft = client.get(f"/api/sessions/{session['id']}/slices/0")
        assert np.asarray(Image.open(io.BytesIO(lung.content))).mean() != np.asarray(Image.open(io.BytesIO(soft.content))).mean()
        saved = client.post(f"/api/sessions/{session['id']}/save", json={"format": "nii.gz"})
        assert saved.status_code == 400 and "download the mask instead" in saved.json()["error"]
        # Uploads land in a temporary folder (no --upload-dir), removed at shutdown: nothing is saved there.
        scan = np.zeros((8, 32, 32), dtype=np.int16)
        scan[2:6, 10:20, 10:20] = 400
        uploaded = client.post(
            "/api/cases", params={"name": "scan.nii.gz"}, content=nifti_bytes(scan), headers={"Content-Type": "application/octet-stream"}
        )
        assert uploaded.status_code == 201 and not uploaded.json()["can_save"]
        session = open_case(client, uploaded.json()["id"])
        assert client.post(f"/api/sessions/{session['id']}/prompts", json={"slice": 4, "box": [8, 8, 22, 22]}).status_code == 200
        saved = client.post(f"/api/sessions/{session['id']}/save", json={"format": "nii.gz"})
        assert saved.status_code == 400 and "download the mask instead" in saved.json()["error"]
        assert client.get(f"/api/sessions/{session['id']}/mask-file", params={"format": "nii.gz"}).status_code == 200


def test_dicom_series_folder_is_one_case(tmp_path: Path, write_dicom_series) -> None:
    array = np.full((4, 16, 16), -1000, dtype=np.int16)
    write_dicom_series(Volume(array=array, spacing=(1.0, 1.0, 2.0)), tmp_path / "series")
    with TestClient(create_app(ServerSettings(data_dir=tmp_path)), base_url=LOCAL) as client:
        assert [case["id"] for case in client.get("/api/cases").json()] == ["data/series"]
        assert open_case(client, "data/series")["shape"] == [4, 16, 16]


@pytest.mark.parametrize(
    "case_id",
    [
        "data/../data/ct/" + CASE_2,
        "data/ct/../../secret.nii.gz",
        "data//etc/passwd",
        "data/ct\\..\\..\\secret.nii.gz",
        "data/ct/%2e%2e/%2e%2e/secret.nii.gz",
        "data/outside_link.nii.gz",
        "data/.hidden.nii.gz",
        "data/ct/old_mask.nii.gz",
        "data/notes.txt",
        "upload/../ct/" + CASE_2,
        "sample/mni152_t1",
        "/etc/passwd",
        "data/ct/x\x00.nii.gz",
    ],
)
def test_case_ids_never_leave_the_data_folder(server, data_dir: Path, case_id: str) -> None:
    secret = data_dir.parent / "secret.nii.gz"
    secret.write_bytes(nifti_bytes(np.zeros((2, 4, 4), np.uint8)))
    link = data_dir / "outside_link.nii.gz"
    if not link.is_symlink():
        link.symlink_to(secret)
    _, client = server
    response = client.post("/api/sessions", json={"case": case_id})
    assert response.status_code == 404, response.text
    assert response.json() == {"error": f"no case {case_id!r}"}
    assert "outside_link" not in client.get("/api/cases").text


def test_token_is_required_on_every_route(data_dir: Path) -> None:
    token = "a-long-test-token"
    app = create_app(ServerSettings(data_dir=data_dir, token=token, host="0.0.0.0"))
    with TestClient(app, base_url="http://scanner.example") as client:
        for path in ("/", "/static/viewer.js", "/openapi.json", "/docs", "/api/cases", "/api/sessions/x", "/nowhere"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "missing or wrong token" in response.json()["error"]
        # A browser opening the page without it reads a page saying so (it showed the JSON).
        page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert "missing or wrong token: open the URL `medsam2 serve` printed" in page.text
        assert client.get("/api/cases", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert client.get("/api/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/cases", headers={"X-Medsam2-Token": token}).status_code == 200
        # The printed URL carries the token once; the cookie it sets carries it afterwards.
        assert client.get(f"/?token={token}").status_code == 200
        assert client.cookies.get("medsam2_token") == token
        assert client.get("/api/cases").status_code == 200


def test_without_a_token_only_loopback_names_are_answered(server) -> None:
    app, _ = server
    # Extra clients of a shared app are used without `with`, which would run (and end) its lifespan.
    response = TestClient(app, base_url="http://rebound.example.com").get("/api/cases")
    assert response.status_code == 403 and "localhost" in response.json()["error"]
    for base in ("http://localhost:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/cases").status_code == 200


def test_errors_are_one_line_json(server, data_dir: Path) -> None:
    _, client = server
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.put("/api/cases").status_code == 405
    invalid = client.post("/api/sessions", json={"case": 5, "axis": "diagonal"})
    assert invalid.status_code == 422 and invalid.json()["error"].startswith("case:")
    not_json = client.post("/api/sessions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["error"].startswith("request body: not valid JSON (Expecting"), not_json.text
    as_text = client.post("/api/sessions", content=b'{"case": "data/x"}', headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415 and "Content-Type: application/json, not text/plain" in as_text.json()["error"]
    long_id = client.post("/api/sessions", json={"case": "data/" + "x" * 5000})
    assert long_id.status_code == 404 and len(long_id.json()["error"]) == 500 and long_id.json()["error"].endswith("…")
    # The schema documents the bodies errors have.
    responses = client.get("/openapi.json").json()["paths"]["/api/sessions/{session_id}/prompts"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    assert {"400", "404", "415"} <= set(responses)
    # A bug (here in an extra router, the app factory's extension point) is a 500 without a traceback.
    broken = APIRouter()

    @broken.get("/api/broken")
    def fail() -> None:
        raise RuntimeError("internal detail that must not leak")

    app = create_app(ServerSettings(data_dir=data_dir), routers=[broken])
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        response = client.get("/api/broken")
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error (the server's log has the details)"}


def test_uploads_are_checked_before_they_are_stored(data_dir: Path, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    app = create_app(ServerSettings(data_dir=data_dir, upload_dir=uploads, max_upload_bytes=60_000))
    scan = nifti_bytes((np.arange(8 * 32 * 32).reshape(8, 32, 32) % 251).astype(np.uint8))
    raw = {"Content-Type": "application/octet-stream"}
    write_clip(tmp_path / "clip.mp4", fps=10)
    damaged = bytearray((tmp_path / "clip.mp4").read_bytes())  # its header and first frame intact: the last ones zeroed
    start, end = damaged.find(b"mdat"), damaged.find(b"moov")
    at = start + (end - start) * 9 // 10
    damaged[at : at + 60] = bytes(60)
    with TestClient(app, base_url=LOCAL) as client:

        def upload(name: str, content, headers=raw):
            return client.post("/api/cases", params={"name": name}, content=content, headers=headers)

        refused = {
            "../escape.nii.gz": (upload("../escape.nii.gz", scan), 400, "plain file name"),
            "scan.exe": (upload("scan.exe", scan), 415, "uploads must be one of"),
            "pretend.nii.gz": (upload("pretend.nii.gz", b"<html>" * 1000), 415, "not a .nii.gz file"),
            "cut.nii.gz": (upload("cut.nii.gz", scan[: len(scan) // 2]), 400, "cut.nii.gz: "),
            "damaged.mp4": (upload("damaged.mp4", bytes(damaged)), 400, "damaged.mp4: "),  # every frame is decoded
            "empty.png": (upload("empty.png", b""), 400, "the upload is empty"),
            "scan_mask.nii.gz": (upload("scan_mask.nii.gz", scan), 400, "names ending in _mask are the server's saved masks"),
            "line\n.nii.gz": (upload("line\n.nii.gz", scan), 400, "give a plain file name"),
            "form.nii.gz": (upload("form.nii.gz", scan, {"Content-Type": "multipart/form-data"}), 415, "Content-Type: application/octet-stream"),
            "big.nii.gz": (upload("big.nii.gz", b"\x1f\x8b" + bytes(70_000)), 413, "over the upload limit"),
            # No Content-Length: the limit is enforced while the body streams in.
            "stream.nii.gz": (upload("stream.nii.gz", (b"\x1f\x8b" + bytes(9_998) for _ in range(10))), 413, "over the upload limit"),
        }
        for name, (response, status, fragment) in refused.items():
            assert response.status_code == status, (name, response.text)
            assert fragment in response.json()["error"], (name, response.json())
            assert str(uploads) not in response.json()["error"] and ".upload-" not in response.json()["error"]
        assert list(uploads.iterdir()) == [], "a refused upload left a file behind"

        first, second = upload("scan.nii.gz", scan), upload("scan.nii.gz", scan)
        assert first.status_code == second.status_code == 201
        assert (first.json()["id"], second.json()["id"]) == ("upload/scan.nii.gz", "upload/scan-2.nii.gz")
        assert sorted(p.name for p in uploads.iterdir()) == ["scan-2.nii.gz", "scan.nii.gz"]
        assert "upload/scan.nii.gz" in [case["id"] for case in client.get("/api/cases").json()]
        session = open_case(client, "upload/scan.nii.gz")
        assert session["shape"] == [8, 32, 32] and session["case"]["can_save"]
        # MPEG program streams and Windows Media, which the command line reads, upload too.
        for name, codec in (("clip.mpg", "mpeg1video"), ("clip.wmv", "wmv2")):
            with av.open(str(tmp_path / name), "w") as container:
                stream = container.add_stream(codec, rate=25)
                stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
                for value in (40, 200):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), value, np.uint8), format="rgb24")))
                container.mux(stream.encode())
            assert upload(name, (tmp_path / name).read_bytes()).status_code == 201
            opened = open_case(client, f"upload/{name}")
            assert opened["kind"] == "video" and opened["shape"] == [2, 64, 64] and opened["fps"] > 0
        # An upper-case suffix is stored as the readers know it, so the case opens.
        shouting = upload("LOUD.NII.GZ", scan)
        assert shouting.status_code == 201 and shouting.json()["id"] == "upload/LOUD.nii.gz"
        assert open_case(client, "upload/LOUD.nii.gz")["shape"] == [8, 32, 32]

    # Among the data (not read until opened), it is named as the case when it fails to open, not by its path.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "damaged.mp4").write_bytes(bytes(damaged))
    with TestClient(create_app(ServerSettings(data_dir=tmp_path / "data")), base_url=LOCAL) as client:
        opened = client.post("/api/sessions", json={"case": "data/damaged.mp4"})
        assert opened.status_code == 400 and opened.json()["error"].startswith("damaged.mp4: "), opened.text
        assert str(tmp_path) not in opened.json()["error"]


def test_requests_a_session_must_refuse(server, data_dir: Path, tmp_path: Path) -> None:
    """A prompt with nothing in it (also on a slice prompted before), propagating an object that
    does not exist (404, the progress untouched), saving through a link that leads out of the data
    folder, saving or downloading before any mask; a session offers only the mask formats its case can be written in, and says when the
    model would see a blank image."""
    _, client = server
    session = open_case(client, f"data/ct/{CASE_2}")
    base = f"/api/sessions/{session['id']}"
    assert session["mask_formats"] == ["nii", "nii.gz", "nrrd", "mha", "npz"]  # no PNG (13 slices), no SEG (not DICOM)
    nothing = client.post(f"{base}/propagate", json={})
    assert nothing.status_code == 400 and nothing.json()["error"] == "nothing to propagate: prompt an object on a slice first"
    empty_save = client.post(f"{base}/save", json={"format": "nii.gz"})
    assert empty_save.status_code == 400 and empty_save.json()["error"].startswith("nothing to save: no object has a mask yet")
    empty_download = client.get(f"{base}/mask-file", params={"format": "nii.gz"})  # a file of zeros would pass for a result
    assert empty_download.status_code == 400 and empty_download.json()["error"].startswith("nothing to download: no object has a mask yet")
    assert client.post(f"{base}/prompts", json={"slice": 6, "box": [246, 273, 276, 322]}).status_code == 200
    for request in ({"slice": 6}, {"slice": 6, "obj_id": 1, "name": "renamed?"}):
        empty = client.post(f"{base}/prompts", json=request)
        assert empty.status_code == 400 and "give a box, points or a mask" in empty.json()["error"]
    assert client.post(f"{base}/propagate", json={}).status_code == 200
    before = client.get(base).json()
    assert before["undo_steps"] == 1 and before["progress"]["state"] == "done"
    unknown = client.post(f"{base}/propagate", json={"obj_ids": [99]})
    assert unknown.status_code == 404 and "no object 99" in unknown.json()["error"]
    none = client.post(f"{base}/propagate", json={"obj_ids": []})  # not a 200 "done" that propagated nothing
    assert none.status_code == 422 and none.json()["error"].startswith("obj_ids: "), none.json()
    assert client.get(base).json()["revision"] == before["revision"]
    assert client.get(base).json()["progress"] == before["progress"]

    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"not to be overwritten")
    link = data_dir / "ct" / f"{CASE_2.removesuffix('.npz')}_mask.nii.gz"
    link.symlink_to(outside)
    try:
        refused = client.post(f"{base}/save", json={"format": "nii.gz"})
        assert refused.status_code == 400 and "a symbolic link is there" in refused.json()["error"]
        assert outside.read_bytes() == b"not to be overwritten" and link.is_symlink()
        load = client.post(f"{base}/load", json={"file": link.name})  # nor read through one
        assert load.status_code == 400 and load.json()["error"].startswith(f"{link.name}: a symbolic link;")
    finally:
        link.unlink()

    (tmp_path / "blank").mkdir()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "blank" / "blank.png")
    with TestClient(create_app(ServerSettings(data_dir=tmp_path / "blank")), base_url=LOCAL) as own:
        info = open_case(own, "data/blank.png")
    assert info["mask_formats"] == ["nii", "nii.gz", "nrrd", "mha", "npz", "png"]
    assert any("the model sees one grey level everywhere" in warning for warning in info["warnings"])


def test_a_session_from_prompt_to_saved_mask(server, data_dir: Path) -> None:
    app, client = server
    case = data_dir / "ct" / CASE_2
    volume = load_image(case)
    prompt, truth = key_box(case)
    session = open_case(client, f"data/ct/{CASE_2}")
    sid, base = session["id"], f"/api/sessions/{session['id']}"
    assert session["shape"] == [13, 512, 512] and session["kind"] == "volume"
    assert session["pixel_spacing"] == pytest.approx([volume.spacing[0], volume.spacing[1]])
    assert session["intensity"]["kind"] == "passthrough" and session["window_presets"] == {}

    # Slices are the scan's own pixels; a window is applied in the scan's units.
    png = client.get(f"{base}/slices/{prompt.slice_index}")
    assert png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), volume.array[prompt.slice_index])
    windowed = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/slices/0", params={"window": "100,50"}).content)))
    np.testing.assert_array_equal(windowed == 255, volume.array[0] >= 100)
    assert client.get(f"{base}/slices/13").status_code == 404
    beyond = client.post(f"{base}/prompts", json={"slice": 13, "box": [5, 5, 50, 50]})
    assert beyond.status_code == 404 and beyond.json()["error"] == "slice 13 is out of range 0..12", beyond.text
    assert client.get(f"{base}/slices/0", params={"window": "wide"}).status_code == 400

    # A box on the key slice: the mask there, nothing elsewhere until propagation.
    response = client.post(f"{base}/prompts", json={"slice": prompt.slice_index, "box": list(prompt.box), "name": "lesion"})
    assert response.status_code == 200, response.text
    key_mask = rle.decode(response.json()["mask"], (512, 512))
    assert dice(key_mask, truth[prompt.slice_index]) > 0.85
    (obj,) = response.json()["session"]["objects"]
    assert obj["name"] == "lesion" and obj["slices"] == [prompt.slice_index] and obj["needs_propagation"]
    outside = client.post(f"{base}/prompts", json={"slice": 2, "box": [500, 500, 600, 600]})
    assert outside.status_code == 400 and "reaches outside the 512x512 slice" in outside.json()["error"]
    # Every error about a prompt names its slice and object, a mask's size among them.
    for mask, error in [
        ({"size": [10, 10], "counts": [100]}, "mask size [10, 10] differs from the slice's [512, 512]"),
        ({"size": [512, 512], "counts": [5]}, "mask counts add up to 5 pixels, the slice has 262144"),
    ]:
        refused = client.post(f"{base}/prompts", json={"slice": 2, "obj_id": 3, "mask": mask})
        assert refused.status_code == 400 and refused.json()["error"] == f"prompt on slice 2 (object 3): {error}", refused.text
    unlabelled = client.post(f"{base}/prompts", json={"slice": 2, "points": [[150, 130]]})
    assert unlabelled.json()["error"] == "prompt on slice 2 (object 1): 1 point but 0 labels"
    # Ids beyond a label map's uint16, flags for numbers and click floods are refused before the model runs.
    for bad, where in [({"obj_id": 70000}, "obj_id:"), ({"slice": True}, "slice:"), ({"points": [[5, 5]] * 101, "labels": [1] * 101}, "points:")]:
        refused = client.post(f"{base}/prompts", json={"slice": 2, "box": [5, 5, 50, 50], **bad})
        assert refused.status_code == 422 and refused.json()["error"].startswith(where), refused.text
    not_finite = client.post(f"{base}/prompts", content=b'{"slice": 2, "box": [NaN, 5, 50, 50]}', headers={"Content-Type": "application/json"})
    assert not_finite.status_code == 400 and "not finite" in not_finite.json()["error"], not_finite.text
    centre = [(prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2]
    clicks = {"slice": prompt.slice_index, "obj_id": 9, "points": [centre] * 60, "labels": [1] * 60}
    assert client.post(f"{base}/prompts", json=clicks).status_code == 200
    too_many = client.post(f"{base}/prompts", json=clicks)  # with the 60 already on the slice
    assert too_many.status_code == 400 and "120 clicks, more than the 100" in too_many.json()["error"], too_many.text
    assert client.delete(f"{base}/objects/9").status_code == 200

    done = client.post(f"{base}/propagate", json={"direction": "both"}).json()
    assert done["progress"] == {"state": "done", "done": 12, "total": 12, "message": ""}
    assert not done["objects"][0]["needs_propagation"] and len(done["objects"][0]["slices"]) >= 4

    # Every way of reading the masks agrees: volume RLE, slice RLE, slice PNG, the NIfTI file.
    volume_rle = client.get(f"{base}/masks").json()
    stacked = np.zeros(truth.shape, dtype=bool)
    for entry in volume_rle["slices"]:
        stacked[entry["slice"]] = rle.decode(entry["objects"]["1"], (512, 512))
    assert [entry["slice"] for entry in volume_rle["slices"]] == done["objects"][0]["slices"]
    assert dice(stacked, truth) > 0.75
    other = done["objects"][0]["slices"][0]
    slice_rle = client.get(f"{base}/masks/{other}").json()
    np.testing.assert_array_equal(rle.decode(slice_rle["objects"]["1"], (512, 512)), stacked[other])
    label_png = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/masks/{other}", params={"format": "png"}).content)))
    np.testing.assert_array_equal(label_png, stacked[other].astype(np.uint8))
    nifti = read_nifti(client.get(f"{base}/mask-file").content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti) > 0, stacked)
    assert nifti.GetSpacing() == pytest.approx(volume.spacing)
    assert client.get(f"{base}/mask-file", params={"format": "dcm"}).status_code == 400
    assert client.get(f"{base}/mask-file", params={"format": "xyz"}).json()["error"].startswith("mask format 'xyz'")

    # A second object from a mask prompt (COCO RLE); a malformed one is refused.
    below = prompt.slice_index - 1
    by_mask = client.post(f"{base}/prompts", json={"slice": below, "obj_id": 2, "mask": rle.encode(truth[below])})
    assert by_mask.status_code == 200, by_mask.text
    assert dice(rle.decode(by_mask.json()["mask"], (512, 512)), truth[below]) > 0.8
    assert by_mask.json()["session"]["objects"][1]["prompts"][0]["mask"] is True
    broken = client.post(f"{base}/prompts", json={"slice": below, "obj_id": 2, "mask": {"size": [512, 512], "counts": [7]}})
    assert broken.status_code == 400 and "add up to 7 pixels" in broken.json()["error"]
    empty = {"size": [512, 512], "counts": [512 * 512]}  # an empty mask takes object 2 off that slice
    erased = client.post(f"{base}/prompts", json={"slice": below, "obj_id": 2, "mask": empty})
    assert erased.status_code == 200 and not rle.decode(erased.json()["mask"], (512, 512)).any()
    assert erased.json()["session"]["objects"][1]["prompts"][0]["erased"] is True
    unknown = client.post(f"{base}/prompts", json={"slice": below, "obj_id": 3, "mask": empty})
    assert unknown.status_code == 400 and "object 3 has no mask yet" in unknown.json()["error"]
    assert client.post(f"{base}/undo").json()["objects"][1]["prompts"][0]["erased"] is False
    assert client.delete(f"{base}/objects/2").json()["objects"][0]["id"] == 1

    # Save next to the case; the saved mask is not offered as a case. Saving again replaces it only
    # when asked (it may be another session's work), and sessions of the case say it is there.
    saved = client.post(f"{base}/save", json={"format": "npz"}).json()
    assert saved == {"file": "CT_Lesion_000002_03_01_035-047_mask.npz"}
    np.testing.assert_array_equal(np.load(data_dir / "ct" / saved["file"])["segs"] > 0, stacked)
    assert len(client.get("/api/cases").json()) == 4
    again = client.post(f"{base}/save", json={"format": "npz"})
    assert again.status_code == 409 and again.json()["error"].startswith(f"{saved['file']} was saved earlier")
    # "replace" must be JSON true or false: a string ("yes", "on") was taken as true and overwrote the file.
    lax = client.post(f"{base}/save", json={"format": "npz", "replace": "yes"})
    assert lax.status_code == 422 and lax.json()["error"].startswith("replace: Input should be a valid boolean"), lax.text
    assert client.post(f"{base}/save", json={"format": "npz", "replace": True}).json() == saved
    assert client.get(base).json()["saved_masks"] == [saved["file"]]
    other_session = open_case(client, f"data/ct/{CASE_2}")
    assert other_session["saved_masks"] == [saved["file"]] and other_session["objects"] == []
    # Two clients saving the case at once: one lands, the other is told (both were told it landed,
    # the later file replacing the earlier without a word).
    other = {CLIENT_HEADER: "another-saver-0123456789"}
    rival = client.post("/api/sessions", json={"case": f"data/ct/{CASE_2}"}, headers=other).json()
    rival_prompt = {"slice": prompt.slice_index, "box": list(prompt.box), "obj_id": 3}
    assert client.post(f"/api/sessions/{rival['id']}/prompts", json=rival_prompt, headers=other).status_code == 200
    start = threading.Barrier(2)

    def save(url: str, headers: dict | None) -> int:
        start.wait()
        return client.post(url, json={"format": "nrrd"}, headers=headers).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(save, [f"{base}/save", f"/api/sessions/{rival['id']}/save"], [None, other]))
    assert statuses == [200, 409]
    assert not [path.name for path in (data_dir / "ct").iterdir() if path.name.startswith(".")]
    (data_dir / "ct" / "CT_Lesion_000002_03_01_035-047_mask.nrrd").unlink()
    assert client.delete(f"/api/sessions/{rival['id']}", headers=other).status_code == 204
    assert client.delete(f"/api/sessions/{other_session['id']}").status_code == 204

    # Corrections: a click adds to the slice; undo takes back the click only; rename; delete.
    click = client.post(f"{base}/prompts", json={"slice": prompt.slice_index, "points": [[5, 5]], "labels": [0]})
    assert click.json()["session"]["undo_steps"] == 2
    undone = client.post(f"{base}/undo").json()
    assert undone["undo_steps"] == 1 and undone["objects"][0]["prompts"][0]["points"] == []
    assert undone["objects"][0]["prompts"][0]["box"] == list(prompt.box)
    renamed = client.patch(f"{base}/objects/1", json={"name": "liver lesion"}).json()
    assert renamed["objects"][0]["name"] == "liver lesion"
    assert client.patch(f"{base}/objects/7", json={"name": "x"}).status_code == 404
    # A name is one printable line (it labels DICOM-SEG segments, CSV rows, legends).
    assert client.patch(f"{base}/objects/1", json={"name": "line1\nline2"}).status_code == 422
    assert client.delete(f"{base}/prompts/{prompt.slice_index}", params={"obj_id": 1}).json()["objects"] == []
    assert client.post(f"{base}/undo").json()["error"] == "nothing to undo"
    assert client.delete(f"{base}/objects/1").status_code == 404  # unknown objects are 404 on every route
    assert client.delete(f"{base}/prompts/{prompt.slice_index}", params={"obj_id": 1}).status_code == 404

    # Sessions belong to their client.
    stranger = TestClient(app, base_url=LOCAL)
    assert stranger.get(base).status_code == 404
    assert stranger.get(f"{base}/mask-file").status_code == 404
    assert stranger.get("/api/sessions").json() == []
    assert sid in [s["id"] for s in client.get("/api/sessions").json()]
    assert client.delete(base).status_code == 204
    # Closed by a script's DELETE as much as by a page's: the reason names no page that was not there.
    assert client.get(base).json() == {
        "error": f"session {sid!r} was closed: its client closed it (a DELETE request, as a page showing it sends when another case is opened there)"
    }
    assert client.get("/api/sessions/unknown-id").json() == {"error": "no session 'unknown-id'"}  # a restart forgot it


def test_a_full_server_makes_room_from_the_opening_clients_oldest_session(data_dir: Path) -> None:
    """Tabs closed without closing their sessions would fill the server: a client opening one more
    closes one of its own, one without objects before one with work (the least recently used of
    either kind), says so in the new session's warnings and tells a request still naming it why;
    another client is told the server is full. A client id header that is not a usable id is
    refused (replaced, its sessions would be out of reach)."""
    other = {CLIENT_HEADER: "another-client-0123456789"}
    case = {"case": f"data/ct/{CASE_1}"}
    with TestClient(create_app(ServerSettings(data_dir=data_dir, max_sessions=2)), base_url=LOCAL) as client:
        first, second = open_case(client, case["case"]), open_case(client, case["case"])
        assert client.post(f"/api/sessions/{second['id']}/prompts", json={"slice": 0, "box": [10, 10, 40, 40]}).status_code == 200
        client.get(f"/api/sessions/{second['id']}")
        client.get(f"/api/sessions/{first['id']}")  # used lately, but with no work: it goes
        third = open_case(client, case["case"])
        assert sorted(s["id"] for s in client.get("/api/sessions").json()) == sorted([second["id"], third["id"]])
        limit = "the server holds at most 2 sessions"
        assert third["warnings"] == [f"{limit}: your session of ct/{CASE_1} was closed to open this one"]
        gone = client.get(f"/api/sessions/{first['id']}")
        assert gone.status_code == 404 and gone.json()["error"] == f"session {first['id']!r} was closed: {limit}, and its client (a browser, a script) opened another case"
        assert client.post(f"/api/sessions/{third['id']}/prompts", json={"slice": 0, "box": [10, 10, 40, 40]}).status_code == 200
        fourth = open_case(client, case["case"])  # both with work now: the least recently used goes
        assert sorted(s["id"] for s in client.get("/api/sessions").json()) == sorted([third["id"], fourth["id"]])
        full = client.post("/api/sessions", json=case, headers=other)
        assert full.status_code == 503 and "2 sessions open, its limit" in full.json()["error"]
        # A page that said it was closed gives its place to another client's case (it held it for
        # the idle time, an hour); one reloaded since (a request after) keeps it.
        assert client.post(f"/api/sessions/{third['id']}/leave").status_code == 204
        client.get(f"/api/sessions/{third['id']}")  # the page reloaded
        assert client.post("/api/sessions", json=case, headers=other).status_code == 503
        assert client.post(f"/api/sessions/{fourth['id']}/leave").status_code == 204
        assert client.post("/api/sessions/no-such-session/leave").status_code == 204  # a beacon's answer is not read
        another = client.post("/api/sessions", json=case, headers=other)
        assert another.status_code == 201 and another.json()["warnings"] == []  # another's case is not named to it
        left = client.get(f"/api/sessions/{fourth['id']}")
        assert left.status_code == 404 and left.json()["error"] == f"session {fourth['id']!r} was closed: {limit}, and its page had been closed when another case was opened"
        short = client.get("/api/cases", headers={CLIENT_HEADER: "abc"})
        assert short.status_code == 400 and "give 16 to 64 letters" in short.json()["error"]


def test_a_session_idle_past_the_limit_is_closed_when_next_named(data_dir: Path) -> None:
    """Expiry is not only a matter of making room: a session idle past the limit answers a 404
    saying so (not a revived session), is gone from the client's list and its memory is released;
    the idle time of one whose propagation outlasted the limit counts from the propagation's end."""
    idle = 1.0
    with TestClient(create_app(ServerSettings(data_dir=data_dir, session_idle_seconds=idle)), base_url=LOCAL) as client:
        state = client.app.state.server
        gone = open_case(client, f"data/ct/{CASE_2}")
        session = weakref.ref(state.sessions._sessions[gone["id"]])
        time.sleep(idle + 0.2)
        answer = client.get(f"/api/sessions/{gone['id']}")
        assert answer.status_code == 404 and answer.json() == {"error": f"session {gone['id']!r} was closed: it was idle for more than 1 second"}
        assert client.get("/api/sessions").json() == []
        gc.collect()
        assert session() is None, "a closed session's slices and model state stay in memory"

        kept = open_case(client, f"data/ct/{CASE_2}")
        base = f"/api/sessions/{kept['id']}"
        assert client.post(f"{base}/prompts", json={"slice": 6, "box": [246, 273, 276, 322]}).status_code == 200
        started = time.monotonic()
        ended = client.post(f"{base}/propagate", json={})
        assert ended.status_code == 200 and ended.json()["progress"]["state"] == "done", ended.text
        assert time.monotonic() - started > idle, "the propagation must outlast the idle limit to test it"
        assert client.get(base).status_code == 200


def test_an_idle_session_is_closed_on_a_server_no_request_reaches(data_dir: Path) -> None:
    """Look-ups close expired sessions; a server no one calls any more frees them too (its sweep)."""
    with TestClient(create_app(ServerSettings(data_dir=data_dir, session_idle_seconds=0.5)), base_url=LOCAL) as client:
        sessions = client.app.state.server.sessions
        opened = open_case(client, f"data/ct/{CASE_2}")
        assert opened["id"] in sessions._sessions
        time.sleep(1.5)  # the idle limit, then the sweep half a limit later, with room to spare
        assert opened["id"] not in sessions._sessions


def test_two_clients_at_once_get_their_own_right_masks(server, data_dir: Path) -> None:
    app, _ = server
    cases = [data_dir / "ct" / CASE_1, data_dir / "ct" / CASE_15]
    prompts = [key_box(case)[0] for case in cases]

    # Forward from the key slice only: half the model work of "both", the same test of isolation.
    def one_client(index: int) -> np.ndarray:
        client = TestClient(app, base_url=LOCAL)
        return segment_through_api(client, f"data/ct/{cases[index].name}", prompts[index], "forward")

    with ThreadPoolExecutor(2) as pool:
        masks = list(pool.map(one_client, range(2)))
    for case, prompt, mask in zip(cases, prompts, masks):
        volume = load_image(case)
        slices, axis_index = prepare_slices(volume)

        def alone(predictor, slices=slices, prompt=prompt) -> np.ndarray:
            session = Session(slices, predictor)
            session.apply(prompt)
            session.propagate("forward", progress=False)
            return session.result()

        np.testing.assert_array_equal(mask, from_slices(on_worker(app, alone), axis_index))
        truth = stored_array(volume, "gts") > 0
        assert dice(mask[prompt.slice_index :] > 0, truth[prompt.slice_index :]) > 0.7


def test_a_case_whose_saved_mask_would_be_another_cases_is_not_saved(tmp_path: Path) -> None:
    """clip.mp4 and clip.nii.gz side by side both save clip_mask.*: the server would pass one's mask
    off as the other's (and a second save was "saved earlier, replace?"); it refuses and lists none."""
    write_clip(tmp_path / "clip.mp4", fps=10)
    (tmp_path / "clip.nii.gz").write_bytes(nifti_bytes(np.zeros((4, 32, 32), np.uint8)))
    (tmp_path / "clip_mask.nii.gz").write_bytes(nifti_bytes(np.zeros((4, 32, 32), np.uint8)))
    with TestClient(create_app(ServerSettings(data_dir=tmp_path)), base_url=LOCAL) as client:
        session = open_case(client, "data/clip.mp4")
        assert session["case"]["can_save"] and session["saved_masks"] == []  # clip_mask.nii.gz: whose?
        base = f"/api/sessions/{session['id']}"
        assert client.post(f"{base}/prompts", json={"slice": 0, "box": [18, 28, 51, 61]}).status_code == 200
        refused = client.post(f"{base}/save", json={"format": "npz"})
        assert refused.status_code == 400 and refused.json()["error"] == (
            "clip_mask.npz would also be the saved mask of clip.nii.gz beside this case: rename one of them, or download the mask instead"
        )
        assert not (tmp_path / "clip_mask.npz").exists()
        # Cases are listed in natural name order (frame_2 before frame_10), as a folder of frames is read.
        for number in (10, 2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"frame_{number}.png")
        assert [case["id"] for case in client.get("/api/cases").json()] == ["data/clip.mp4", "data/clip.nii.gz", "data/frame_2.png", "data/frame_10.png"]


def test_a_folder_of_frames_is_one_video_case(tmp_path: Path) -> None:
    """A sub-folder of pictures is a video's frames, one case, as `medsam2 segment` reads it (each
    picture was a case of its own: a clip's frames, none of which propagates); the data folder's own
    pictures stay cases of their own, and a scan beside the frames stays a case."""
    write_clip(tmp_path / "clip.mp4", fps=10)
    with load_video(tmp_path / "clip.mp4") as video:
        decoded = video.read()
    (tmp_path / "endo").mkdir()
    for index, frame in enumerate(decoded):
        Image.fromarray(frame).save(tmp_path / "endo" / f"frame_{index + 1}.png")
    (tmp_path / "endo" / "notes.nii.gz").write_bytes(nifti_bytes(np.zeros((4, 32, 32), np.uint8)))
    Image.fromarray(decoded[0]).save(tmp_path / "xray.png")
    with TestClient(create_app(ServerSettings(data_dir=tmp_path)), base_url=LOCAL) as client:
        listed = [case["id"] for case in client.get("/api/cases").json()]
        assert listed == ["data/clip.mp4", "data/xray.png", "data/endo", "data/endo/notes.nii.gz"]
        session = open_case(client, "data/endo")
        assert session["kind"] == "video" and session["shape"] == [6, 96, 96]
        frame = np.asarray(Image.open(io.BytesIO(client.get(f"/api/sessions/{session['id']}/slices/2").content)))
        np.testing.assert_array_equal(frame, decoded[2])


def test_a_video_clip_opens_as_frames(server) -> None:
    """An MP4 opens as a video: frames as decoded, its frame rate, a box giving exactly the engine's
    mask on the frame, masks written as a sequence."""
    app, client = server
    with load_video(app.state.server.catalog.get("data/video/clip.mp4").path) as video:
        decoded = video.read()
    session = open_case(client, "data/video/clip.mp4")
    assert session["kind"] == "video" and session["fps"] == 10 and session["color"]
    assert session["shape"] == [6, 96, 96] and session["mask_formats"] == ["npz", "nii", "nii.gz"]
    assert session["pixel_spacing"] is None and session["slice_spacing"] is None  # an MP4 has none (was [1, 1])
    base = f"/api/sessions/{session['id']}"
    frame = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/slices/2", params={"window": "lung"}).content)))
    np.testing.assert_array_equal(frame, decoded[2])
    nothing = client.post(f"{base}/propagate", json={})
    assert nothing.status_code == 400 and nothing.json()["error"] == "nothing to propagate: prompt an object on a frame first"
    beyond = client.post(f"{base}/prompts", json={"slice": 6, "box": [18, 28, 51, 61]})
    assert beyond.status_code == 404 and beyond.json()["error"] == "frame 6 is out of range 0..5"  # a video's messages say frame
    outside = client.post(f"{base}/prompts", json={"slice": 0, "box": [18, 28, 151, 61]})
    assert outside.status_code == 400 and "frame" in outside.json()["error"] and "slice" not in outside.json()["error"], outside.text
    response = client.post(f"{base}/prompts", json={"slice": 0, "box": [18, 28, 51, 61]})
    mask = rle.decode(response.json()["mask"], (96, 96))
    downloaded = client.get(f"{base}/mask-file", params={"format": "npz"})
    assert downloaded.headers["content-disposition"].endswith("''clip_mask.npz")  # was clip.mp4_mask.npz
    sequence = np.load(io.BytesIO(downloaded.content))
    assert sequence["segs"].shape == (6, 96, 96) and float(sequence["frame_rate"]) == 10
    np.testing.assert_array_equal(sequence["segs"][0] > 0, mask)
    refused = client.get(f"{base}/mask-file", params={"format": "nrrd"})
    assert refused.status_code == 400 and "choose one of npz, nii, nii.gz" in refused.json()["error"]
    coronal = client.post("/api/sessions", json={"case": "data/video/clip.mp4", "axis": "coronal"}).json()
    assert coronal["axis"] == "axial" and coronal["shape"] == [6, 96, 96]
    assert coronal["warnings"] == ["video/clip.mp4 is a video, shown frame by frame: it has no coronal view"]
    engine_mask = on_worker(app, lambda predictor: Session(decoded, predictor).add_prompt(0, 1, box=(18, 28, 51, 61)))
    np.testing.assert_array_equal(mask, engine_mask)
    assert dice(mask, CLIP_TRUTH[0]) > 0.7

    # A video's mask sequence loads back (a downloaded NIfTI 2D+t here); one of another length does not.
    def send(name: str, content: bytes):
        return client.put(f"{base}/mask-file", params={"name": name}, content=content, headers={"Content-Type": "application/octet-stream"})

    truth = CLIP_TRUTH.astype(np.uint8) * 3
    buffer = io.BytesIO()
    np.savez(buffer, segs=truth)
    assert send("truth.npz", buffer.getvalue()).json()["objects"][0]["slices"] == list(range(6))
    nifti = client.get(f"{base}/mask-file", params={"format": "nii.gz"}).content
    assert send("clip_mask.nii.gz", nifti).status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(client.get(f"{base}/mask-file", params={"format": "npz"}).content))["segs"], truth)
    buffer = io.BytesIO()
    np.savez(buffer, segs=truth[:4])
    short = send("short.npz", buffer.getvalue())
    assert short.status_code == 400 and short.json()["error"] == "short.npz: 4 frames of 96x96; the video has 6 of 96x96"


def test_a_coronal_session_says_how_to_show_its_slices(server, data_dir: Path) -> None:
    """Coronal slices of a CT case stored PLI (columns run to the back, rows to the patient's left,
    slices down): the sagittal-looking columns of its arrays are stepped through, its slices already
    run head down and right to left, so they are shown as stored, with 5 mm between rows; a 2D
    picture has no sagittal view, so it opens as it is, saying so."""
    _, client = server
    opened = client.post("/api/sessions", json={"case": f"data/ct/{CASE_2}", "axis": "coronal"})
    assert opened.status_code == 201, opened.text
    info = opened.json()
    assert info["shape"] == [512, 13, 512] and info["axis"] == "coronal"
    assert info["display"] == {"transpose": False, "flip_rows": False, "flip_columns": False}
    assert info["warnings"] == ["coronal slices are 512×13 pixels (wide×high): too narrow for the model to segment reliably; choose the axis across the scan's thin dimension"]
    axial = client.post("/api/sessions", json={"case": f"data/ct/{CASE_2}"}).json()
    assert axial["display"] == {"transpose": True, "flip_rows": False, "flip_columns": False}  # its rows run left, columns back
    assert axial["warnings"] == []
    assert info["slice_step"] == axial["slice_step"] == 1  # stored front to back and head to feet: reading order
    assert info["pixel_spacing"] == pytest.approx([0.977, 5.0], abs=1e-3) and info["slice_spacing"] == pytest.approx(0.977, abs=1e-3)
    # A label map loaded into the coronal session is read in the scan's layout and cut into its slices.
    labels = stored_array(load_image(data_dir / "ct" / CASE_2), "gts").astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, segs=labels)
    loaded = client.put(f"/api/sessions/{info['id']}/mask-file", params={"name": "gts.npz"}, content=buffer.getvalue(), headers={"Content-Type": "application/octet-stream"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["objects"][0]["slices"] == np.flatnonzero(labels.any(axis=(0, 1))).tolist()  # its coronal slices: the arrays' columns
    downloaded = np.load(io.BytesIO(client.get(f"/api/sessions/{info['id']}/mask-file", params={"format": "npz"}).content))["segs"]
    np.testing.assert_array_equal(downloaded, labels)
    picture = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(picture, format="PNG")
    uploaded = client.post("/api/cases", params={"name": "flat.png"}, content=picture.getvalue(), headers={"Content-Type": "application/octet-stream"})
    assert uploaded.status_code == 201, uploaded.text
    flat = client.post("/api/sessions", json={"case": uploaded.json()["id"], "axis": "sagittal"}).json()
    assert flat["axis"] == "axial" and flat["shape"] == [1, 64, 64] and flat["slice_step"] == 1
    assert flat["warnings"] == ["flat.png is a 2D image, shown as it is: it has no sagittal view"]
    assert info["patient_frame"] and not client.post("/api/sessions", json={"case": uploaded.json()["id"]}).json()["patient_frame"]


def test_closing_a_session_stops_its_propagation(server) -> None:
    """Closed while it propagates: the propagation stops at the next slice and its request is a 404
    (it no longer holds the device for a client that left)."""
    _, client = server
    session = open_case(client, f"data/ct/{CASE_2}")
    base = f"/api/sessions/{session['id']}"
    assert client.post(f"{base}/prompts", json={"slice": 6, "box": [246, 273, 276, 322]}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.post, f"{base}/propagate", json={})
        deadline = time.monotonic() + 60
        while client.get(base).json()["progress"]["done"] < 1:
            assert time.monotonic() < deadline and not running.done(), "the propagation never started"
            time.sleep(0.05)
        # Reads wait for no propagation: each would hold one of the server's threads all along.
        started = time.monotonic()
        busy = client.get(f"{base}/masks/6")
        assert busy.status_code == 503 and busy.json()["error"].startswith("the session is propagating ("), busy.text
        assert time.monotonic() - started < 5 and not running.done()
        assert client.delete(base).status_code == 204
        stopped = running.result(timeout=60)
    assert stopped.status_code == 404 and "was closed" in stopped.json()["error"]
    assert client.get(base).status_code == 404


def test_a_saved_or_sent_mask_loads_back_for_correction(server, data_dir: Path, tmp_path: Path) -> None:
    """A mask saved beside the case (or a label map sent from the client) becomes the session's
    objects, exactly as in the file; a click corrects one slice and undo goes back to the file's mask."""
    app, client = server
    case = data_dir / "ct" / CASE_15
    volume = load_image(case)
    gts = stored_array(volume, "gts") > 0
    labels = gts.astype(np.uint8)
    labels[:2, 10:40, 20:60] = 2
    saved_name = "CT_Lesion_000015_01_01_081-093_mask.nii.gz"
    save_mask(labels, like=volume, path=data_dir / "ct" / saved_name)
    session = open_case(client, f"data/ct/{CASE_15}")
    base = f"/api/sessions/{session['id']}"
    assert session["saved_masks"] == [saved_name]
    key = int(np.argmax(gts.reshape(gts.shape[0], -1).sum(axis=1)))
    assert client.post(f"{base}/prompts", json={"slice": 0, "obj_id": 4, "box": [300, 300, 340, 340]}).status_code == 200

    def label_map() -> np.ndarray:
        return sitk.GetArrayFromImage(read_nifti(client.get(f"{base}/mask-file").content))

    loaded = client.post(f"{base}/load", json={"file": saved_name})
    assert loaded.status_code == 200, loaded.text
    info = loaded.json()
    assert [obj["id"] for obj in info["objects"]] == [1, 2] and info["undo_steps"] == 0  # object 4 was replaced
    assert info["objects"][0]["slices"] == np.flatnonzero(gts.any(axis=(1, 2))).tolist()
    assert not any(obj["needs_propagation"] for obj in info["objects"])
    np.testing.assert_array_equal(label_map(), labels)

    rows, cols = np.nonzero(gts[key])
    edge = [float(cols.min()) + 1, float(rows[np.argmin(cols)])]
    clicked = client.post(f"{base}/prompts", json={"slice": key, "points": [edge], "labels": [0]})
    assert clicked.status_code == 200 and clicked.json()["session"]["undo_steps"] == 1
    corrected = label_map()
    changed = np.flatnonzero((corrected != labels).any(axis=(1, 2))).tolist()
    assert changed == [key]
    assert client.post(f"{base}/undo").json()["undo_steps"] == 0
    np.testing.assert_array_equal(label_map(), labels)
    # At the object's last slice a click lets propagation go on past it; undo puts back the file's
    # mask with nothing waiting (a Propagate then changes nothing).
    last = int(np.flatnonzero(gts.any(axis=(1, 2))).max())
    rows, cols = np.nonzero(gts[last])
    assert client.post(f"{base}/prompts", json={"slice": last, "points": [[float(cols.mean()), float(rows.mean())]], "labels": [1]}).status_code == 200
    assert client.post(f"{base}/propagate").json()["objects"][0]["needs_propagation"] is False
    undone = client.post(f"{base}/undo").json()
    assert undone["undo_steps"] == 0 and not any(obj["needs_propagation"] for obj in undone["objects"])
    np.testing.assert_array_equal(label_map(), labels)
    client.post(f"{base}/propagate")
    np.testing.assert_array_equal(label_map(), labels)

    missing = client.post(f"{base}/load", json={"file": "other_mask.nii.gz"})
    assert missing.status_code == 404 and missing.json()["error"].startswith("no saved mask 'other_mask.nii.gz'")
    stranger = TestClient(app, base_url=LOCAL)
    assert stranger.post(f"{base}/load", json={"file": saved_name}).status_code == 404

    # A label map sent from the client, in another of the case's mask formats.
    def send(name: str, content: bytes, content_type: str = "application/octet-stream"):
        return client.put(f"{base}/mask-file", params={"name": name}, content=content, headers={"Content-Type": content_type})

    only_marker = np.where(labels == 2, 7, 0).astype(np.uint8)
    save_mask(only_marker, like=volume, path=tmp_path / "edited.nrrd")
    sent = send("edited.nrrd", (tmp_path / "edited.nrrd").read_bytes())
    assert sent.status_code == 200, sent.text
    assert [obj["id"] for obj in sent.json()["objects"]] == [7]
    np.testing.assert_array_equal(label_map(), only_marker)

    save_mask(labels[:5], like=Volume(array=volume.array[:5], spacing=volume.spacing), path=tmp_path / "short.nii.gz")
    short = send("short.nii.gz", (tmp_path / "short.nii.gz").read_bytes())
    assert short.status_code == 400, short.text
    assert short.json()["error"] == f"short.nii.gz vs ct/{CASE_15}: shape (Z, Y, X) differs: (5, 512, 512) vs (13, 512, 512)"
    save_mask(np.zeros_like(labels), like=volume, path=tmp_path / "empty.nii.gz")
    empty = send("empty.nii.gz", (tmp_path / "empty.nii.gz").read_bytes())
    assert empty.status_code == 400 and empty.json()["error"] == "empty.nii.gz: the label map is empty: it holds no object"
    assert send("clip.mp4", b"\x00" * 64).status_code == 415
    assert send("edited.nrrd", b"not a nrrd file").status_code == 415
    assert send("edited.nrrd", (tmp_path / "edited.nrrd").read_bytes(), "multipart/form-data").status_code == 415
    np.testing.assert_array_equal(label_map(), only_marker)  # refused files changed nothing
    assert not list(app.state.server.catalog.upload_dir.glob(".upload-*")), "staged files are removed"


def test_undo_gives_a_click_back_the_propagated_mask_it_refined(server, data_dir: Path) -> None:
    """Two clicks on a slice that only propagation had reached; undoing the second leaves the slice
    as the first click made it (that click refined the propagated mask: undo re-applies it to that
    mask, not to an empty slice)."""
    _, client = server
    prompt, truth = key_box(data_dir / "ct" / CASE_2)
    base = f"/api/sessions/{open_case(client, f'data/ct/{CASE_2}')['id']}"
    client.post(f"{base}/prompts", json={"slice": prompt.slice_index, "box": list(prompt.box)})
    assert client.post(f"{base}/propagate").json()["progress"]["state"] == "done"
    index = prompt.slice_index + 2
    rows, cols = np.nonzero(truth[index])
    inside = [[float(cols[k]), float(rows[k])] for k in (0, len(rows) // 2)]

    def click(point: list[float]) -> np.ndarray:
        answer = client.post(f"{base}/prompts", json={"slice": index, "points": [point], "labels": [1]})
        assert answer.status_code == 200, answer.text
        return rle.decode(answer.json()["mask"], (512, 512))

    first = click(inside[1])
    click(inside[0])
    assert client.post(f"{base}/undo").json()["undo_steps"] == 2
    shown = rle.decode(client.get(f"{base}/masks/{index}").json()["objects"]["1"], (512, 512))
    np.testing.assert_array_equal(shown, first)
    assert client.delete(base).status_code == 204


def test_object_names_travel_in_a_dicom_seg(server) -> None:
    """A DICOM case's mask downloaded as a DICOM-SEG labels each segment with its object's name, and a
    SEG loaded into a session names its objects after its segments (an unnamed one stays unnamed)."""
    _, client = server
    scan = Path(get_testdata_file("CT_small.dcm"))
    uploaded = client.post("/api/cases", params={"name": "ct.dcm"}, content=scan.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert uploaded.status_code == 201, uploaded.text
    base = f"/api/sessions/{open_case(client, uploaded.json()['id'])['id']}"
    assert client.post(f"{base}/prompts", json={"slice": 0, "box": [48, 40, 72, 64], "name": "spinal canal"}).status_code == 200
    seg = client.get(f"{base}/mask-file", params={"format": "dcm"})
    assert seg.status_code == 200 and [s.SegmentLabel for s in pydicom.dcmread(io.BytesIO(seg.content)).SegmentSequence] == ["spinal canal"]

    labels = np.zeros((1, 128, 128), dtype=np.uint8)
    labels[0, 10:30, 10:30], labels[0, 90:110, 90:110] = 1, 2
    with tempfile.TemporaryDirectory() as folder:
        save_mask(labels, like=load_image(scan), path=Path(folder) / "two.dcm", names={2: "marker"})
        content = (Path(folder) / "two.dcm").read_bytes()
    loaded = client.put(f"{base}/mask-file", params={"name": "two.dcm"}, content=content, headers={"Content-Type": "application/octet-stream"})
    assert loaded.status_code == 200, loaded.text
    assert [(o["id"], o["name"]) for o in loaded.json()["objects"]] == [(1, None), (2, "marker")]


def test_a_change_made_on_an_older_revision_is_refused(server, data_dir: Path) -> None:
    """Each change counts up the session's revision; a change sent with If-Match naming an older one
    (a second tab changed the session meanwhile) is refused with 412 and changes nothing."""
    _, client = server
    prompt, _ = key_box(data_dir / "ct" / CASE_2)
    session = open_case(client, f"data/ct/{CASE_2}")
    base = f"/api/sessions/{session['id']}"
    assert session["revision"] == 0
    box = {"slice": prompt.slice_index, "box": list(prompt.box)}
    first = client.post(f"{base}/prompts", json=box, headers={"If-Match": '"0"'})
    assert first.status_code == 200, first.text
    assert first.json()["session"]["revision"] == 1
    renamed = client.patch(f"{base}/objects/1", json={"name": "lesion"}, headers={"If-Match": 'W/"1"'})
    assert renamed.status_code == 200 and renamed.json()["revision"] == 2

    stale = client.post(f"{base}/prompts", json={**box, "obj_id": 2}, headers={"If-Match": "1"})
    assert stale.status_code == 412
    assert stale.json()["error"] == (
        "the session changed since revision 1 (now 2), by another tab or request of this client: "
        "look at its current state before changing it"
    )
    assert client.post(f"{base}/undo", headers={"If-Match": "0"}).status_code == 412
    after = client.get(base).json()
    assert after["revision"] == 2 and [obj["id"] for obj in after["objects"]] == [1] and after["undo_steps"] == 1

    bad = client.post(f"{base}/undo", headers={"If-Match": "latest"})
    assert bad.status_code == 400 and "If-Match 'latest'" in bad.json()["error"]
    superscript = client.post(f"{base}/undo", headers={"If-Match": b"\xb2"})  # "²", a digit to str.isdigit: was a 500
    assert superscript.status_code == 400 and "If-Match" in superscript.json()["error"]
    # Without If-Match a change applies to the session as it is.
    assert client.post(f"{base}/undo").json()["revision"] == 3
    assert client.delete(base).status_code == 204


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_stopped_by_its_usual_signals_ends_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C or a service manager's SIGTERM is how a server ends: status 0 and a line saying it
    stopped (uvicorn raises the signal again once shut down, which ended the command as a failure)."""
    (tmp_path / "data").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "medsam2.cli", "serve", "--data", str(tmp_path / "data"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_as_in_a_terminal,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "in a browser" in line:
            break
    assert process.poll() is None, "".join(lines)
    url = re.search(r"Open (http://\S+) in a browser", lines[-1]).group(1)
    deadline = time.monotonic() + 60
    while True:  # serving: stopped as a user stops it, not while it starts
        try:
            with urllib.request.urlopen(f"{url}api/info", timeout=5):
                break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            time.sleep(0.1)
    process.send_signal(stop)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0, "".join(lines) + rest
    assert rest.strip().splitlines()[-1] == "stopped serving" and "error" not in rest, rest


def test_a_body_json_cannot_read_is_a_clear_4xx(server) -> None:
    """A JSON body sent without a Content-Type (Python's requests with `data=json.dumps(...)`) was a
    422 saying "Input should be a valid dictionary" of a valid JSON object; one that is not UTF-8
    (a name in cp1252) or nested past the recursion limit was a 400 "There was an error parsing the body"."""
    _, client = server
    unlabelled = client.post("/api/sessions", content=b'{"case": "data/nothing"}')
    assert unlabelled.status_code == 415, unlabelled.text
    assert unlabelled.json() == {"error": "send the request body as JSON with Content-Type: application/json (the request had no Content-Type)"}
    as_json = {"Content-Type": "application/json"}
    assert client.post("/api/sessions", content=b"[]", headers=as_json).status_code == 422  # JSON, not an object: as before
    assert client.post("/api/sessions").json() == {"error": "request: Field required"}  # no body at all: as before
    for body in (b'{"case": "data/L\xe4sion.npz"}', b"[" * 100_000 + b"]" * 100_000):
        refused = client.post("/api/sessions", content=body, headers=as_json)
        assert refused.status_code == 422, refused.text
        assert refused.json() == {"error": "request body: not valid JSON (not UTF-8 text, or nested too deeply)"}


def test_a_session_closed_by_a_script_is_not_said_closed_by_a_page(server) -> None:
    _, client = server
    sid = open_case(client, f"data/ct/{CASE_2}")["id"]
    assert client.delete(f"/api/sessions/{sid}").status_code == 204
    gone = client.get(f"/api/sessions/{sid}")
    assert gone.status_code == 404
    assert gone.json() == {
        "error": f"session {sid!r} was closed: its client closed it (a DELETE request, as a page showing it sends when another case is opened there)"
    }


def test_a_json_body_past_its_limit_is_a_413_before_it_is_parsed(server) -> None:
    """A JSON body was read and parsed whole, however large: 60 MB of mask counts took the server a
    gigabyte before the counts were found wrong, so one request could take it down. JSON routes now
    stop at MAX_JSON_BODY, declared or not (chunked), with the usual one-line 413."""
    from medsam2.server.errors import MAX_JSON_BODY

    _, client = server
    sid = open_case(client, f"data/ct/{CASE_2}")["id"]
    as_json = {"Content-Type": "application/json"}
    expected = {"error": f"request body: over the {MAX_JSON_BODY // 2**20} MiB a JSON request may have"}
    declared = client.post(f"/api/sessions/{sid}/prompts", content=b" " * (MAX_JSON_BODY + 1), headers=as_json)
    assert declared.status_code == 413 and declared.json() == expected, declared.text

    def chunks():
        yield b'{"slice": 3, "mask": {"size": [512, 512], "counts": ['
        for _ in range(MAX_JSON_BODY // 2**20 + 1):
            yield b"1," * 2**19

    streamed = client.post(f"/api/sessions/{sid}/prompts", content=chunks(), headers=as_json)
    assert streamed.status_code == 413 and streamed.json() == expected, streamed.text
    # Bodies under the limit are taken as before.
    assert client.post(f"/api/sessions/{sid}/prompts", json={"slice": 6, "box": [246, 273, 276, 322]}).status_code == 200
    assert client.delete(f"/api/sessions/{sid}").status_code == 204


def test_a_dicom_upload_whose_pixels_are_cut_short_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """A DICOM file whose header states more pixels than it holds (cut short, or Rows and Columns made
    up) was taken as a case: GDCM filled the stated size with zeros, 14 GB for pydicom's 39 kB CT
    slice stated as 60000x60000, and opening it was a 500 (out of memory). It is now a 400 naming
    the sizes (6000x6000 here: 60000x60000 is over the voxels an upload may declare, a 413), and
    nothing is kept; a whole file still uploads."""
    uploads = tmp_path / "uploads"
    app = create_app(ServerSettings(data_dir=data_dir, upload_dir=uploads))
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    whole = io.BytesIO()
    dataset.save_as(whole)
    raw = {"Content-Type": "application/octet-stream"}
    with TestClient(app, base_url=LOCAL) as client:
        for name, change in (("stated.dcm", {"Rows": 6000, "Columns": 6000}), ("frames.dcm", {"NumberOfFrames": 40})):
            for keyword, value in change.items():
                setattr(dataset, keyword, value)
            claimed = io.BytesIO()
            dataset.save_as(claimed)
            refused = client.post("/api/cases", params={"name": name}, content=claimed.getvalue(), headers=raw)
            assert refused.status_code == 400, refused.text
            assert "its pixel data is cut short: the header states" in refused.json()["error"], refused.text
            dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        cut = client.post("/api/cases", params={"name": "cut.dcm"}, content=whole.getvalue()[:-5000], headers=raw)
        assert cut.status_code == 400 and "cut short" in cut.json()["error"], cut.text
        assert [case["id"] for case in client.get("/api/cases").json() if case["source"] == "upload"] == []
        assert client.post("/api/cases", params={"name": "ct.dcm"}, content=whole.getvalue(), headers=raw).status_code == 201
    assert sorted(path.name for path in uploads.iterdir()) == ["ct.dcm"]


def test_a_scan_too_large_for_the_servers_memory_is_a_503_and_the_server_goes_on(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A scan under the voxel cap can still need more memory than the machine has: reading it raised
    MemoryError, and opening or uploading it was a bug's 500. It is now a 503 naming the case, one
    line, nothing kept, and the server serves the next request. (The reader is made to run out of
    memory: only the error's mapping is under test.)"""
    import medsam2.server.cases
    import medsam2.server.sessions

    def out_of_memory(path, *args, **kwargs):
        raise MemoryError

    uploads = tmp_path / "uploads"
    npz = io.BytesIO()
    np.savez(npz, imgs=np.zeros((2, 8, 8), np.int16))
    with TestClient(create_app(ServerSettings(data_dir=data_dir, upload_dir=uploads)), base_url=LOCAL) as client:
        monkeypatch.setattr(medsam2.server.sessions, "load_image", out_of_memory)
        opened = client.post("/api/sessions", json={"case": f"data/ct/{CASE_1}"})
        assert opened.status_code == 503, opened.text
        assert opened.json() == {"error": f"ct/{CASE_1}: the scan needs more memory than the server has; open it on a machine with more memory"}
        monkeypatch.setattr(medsam2.server.cases, "load_image", out_of_memory)
        raw = {"Content-Type": "application/octet-stream"}
        uploaded = client.post("/api/cases", params={"name": "big.npz"}, content=npz.getvalue(), headers=raw)
        assert uploaded.status_code == 503, uploaded.text
        assert uploaded.json()["error"].startswith("big.npz: the scan needs more memory than the server has")
        assert client.get("/api/cases").status_code == 200
    assert list(uploads.iterdir()) == []


def test_an_upload_declaring_more_voxels_than_the_server_reads_is_refused_unread(data_dir: Path, tmp_path: Path) -> None:
    """A few kB of .nii.gz (zeros compress 1000:1) or npz can declare billions of voxels; reading
    one to check it would exhaust the server's memory. Its header is read first: a 413 naming the
    count, nothing kept. (The files here hold only headers: read whole, they would be "truncated".)"""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 2))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    nifti = gzip.compress(header.binaryblock + bytes(4) + bytes(1000))
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": (2000, 1000, 1000)})
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("imgs.npy", npy.getvalue() + bytes(1000))
    uploads = tmp_path / "uploads"
    raw = {"Content-Type": "application/octet-stream"}
    with TestClient(create_app(ServerSettings(data_dir=data_dir, upload_dir=uploads)), base_url=LOCAL) as client:
        for name, body, count in (("bomb.nii.gz", nifti, "1,800,000,000"), ("bomb.npz", npz.getvalue(), "2,000,000,000")):
            refused = client.post("/api/cases", params={"name": name}, content=body, headers=raw)
            assert refused.status_code == 413, refused.text
            assert refused.json()["error"] == f"{name}: its header declares {count} voxels, over the 1,073,741,824 an uploaded scan may have"
    assert list(uploads.iterdir()) == []
