"""The annotation routes inside the medsam2 web app: an annotator's whole round trip over HTTP with
the real LiteMedSAM, lease conflicts, errors, and the page's panel script."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from fastapi.testclient import TestClient
from PIL import Image
from test_annotate_work import write_disc_case

from medsam2.annotate import ProjectSettings, import_cases, init_project, open_project
from medsam2.annotate.work import CaseModel, Predictors, covered_slices, read_snapshot
from medsam2.annotate.routes import annotation_router
from medsam2.server import ServerSettings, create_app
from medsam2.server.rle import encode


class NoModel(Predictors):
    def get(self, round_row):
        raise AssertionError("a model was built")


def client_for(folder: Path | None) -> TestClient:
    return TestClient(create_app(ServerSettings(), routers=[annotation_router(folder)]), base_url="http://127.0.0.1")


def test_an_annotator_works_a_case_over_http(tmp_path: Path, draw_recist) -> None:
    truth = write_disc_case(tmp_path / "disc.npz", draw_recist)
    project = init_project(tmp_path / "project")
    import_cases(project, [tmp_path / "disc.npz"], progress=False)
    project.close()
    with client_for(tmp_path / "project") as client:
        assert client.get("/api/annotate/status").json()["project"]["counts"]["new"] == 1
        taken = client.post("/api/annotate/queue", json={"annotator": "alice"})
        assert taken.status_code == 200, taken.text
        case = taken.json()
        assert (case["name"], case["state"], case["slices"], case["masked_slices"]) == ("disc", "in_review", 3, [0, 1, 2])
        assert case["preseg_source"] == "hints" and case["model_version"].startswith("lite-medsam@")
        assert client.post("/api/annotate/queue", json={"annotator": "bob"}).status_code == 204

        png = client.get("/api/annotate/cases/disc/slices/1.png", params={"annotator": "alice"})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        conflict = client.post("/api/annotate/cases/disc/prompts", json={"annotator": "bob", "slice": 0, "box": [30, 34, 58, 62]})
        assert conflict.status_code == 409 and "leased to alice" in conflict.json()["error"]

        prompted = client.post("/api/annotate/cases/disc/prompts", json={"annotator": "alice", "slice": 0, "box": [30, 34, 58, 62]})
        assert prompted.status_code == 200 and prompted.json()["interactions"] == 1, prompted.text
        erased = encode(np.zeros(truth.shape[1:], dtype=bool))
        corrected = client.post("/api/annotate/cases/disc/corrections", json={"annotator": "alice", "slice": 2, "mask": erased})
        assert corrected.json()["masked_slices"] == [0, 1] and corrected.json()["interactions"] == 2
        undone = client.post("/api/annotate/cases/disc/undo", json={"annotator": "alice"})
        assert undone.json()["masked_slices"] == [0, 1, 2] and undone.json()["interactions"] == 1
        # What the page shows is kept for the commands: `annotate show -o` then builds no model.
        opened = open_project(tmp_path / "project")
        with opened.transaction() as session:
            snapshot = read_snapshot(opened, session, opened.case(session, "disc"))
        kept = CaseModel(opened, snapshot, NoModel()).labels()
        assert [int(i) for i in covered_slices(kept)] == [0, 1, 2]
        opened.close()
        # Every action renews the lease, and its answer says until when.
        assert undone.json()["lease_expires"] > corrected.json()["lease_expires"] > prompted.json()["lease_expires"]

        inverted = client.post("/api/annotate/cases/disc/prompts", json={"annotator": "alice", "slice": 0, "box": [58, 62, 30, 34]})
        assert inverted.status_code == 400 and "inverted" in inverted.json()["error"]
        wrong_size = client.post("/api/annotate/cases/disc/corrections", json={"annotator": "alice", "slice": 2, "mask": encode(np.zeros((4, 4), bool))})
        assert wrong_size.status_code == 400 and "differs from the slice's" in wrong_size.json()["error"]
        beyond = client.post("/api/annotate/cases/disc/corrections", json={"annotator": "alice", "slice": 2, "obj_id": 70000, "mask": erased})
        assert beyond.status_code == 422 and beyond.json()["error"].startswith("obj_id:"), beyond.text
        assert client.get("/api/annotate/cases/ghost").status_code == 404

        accepted = client.post("/api/annotate/cases/disc/accept", json={"annotator": "alice"})
        assert accepted.status_code == 200 and accepted.json()["state"] == "accepted"
        history = [event["kind"] for event in client.get("/api/annotate/cases/disc").json()["history"]]
        assert history == ["lease", "presegment", "prompt", "correction", "undo", "accept"]
        (effort,) = client.get("/api/annotate/report").json()["cases"]
        assert (effort["interactions"], effort["prompts"], effort["corrections"], effort["undos"]) == (3, 1, 1, 1)
        plot = client.get("/api/annotate/report.png")
        assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"
        again = client.post("/api/annotate/cases/disc/undo", json={"annotator": "alice"})
        assert again.status_code == 409 and "already accepted" in again.json()["error"]


def test_without_a_project_the_status_says_so_and_the_other_routes_answer_404(tmp_path: Path) -> None:
    with client_for(None) as client:
        status = client.get("/api/annotate/status")
        assert status.status_code == 200 and status.json() == {"project": None}
        missing = client.post("/api/annotate/queue", json={"annotator": "alice"})
        assert missing.status_code == 404 and "no annotation project" in missing.json()["error"]
        script = client.get("/annotate/panel.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert 'from "/static/api.js"' in script.text
        # The schema documents the error bodies and statuses these routes answer (was FastAPI's
        # default 422 only), as the core API's.
        responses = client.get("/openapi.json").json()["paths"]["/api/annotate/cases/{name}/prompts"]["post"]["responses"]
        assert {"400", "404", "409", "422"} <= set(responses)
        assert responses["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
        assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}


def test_slices_are_shown_turned_and_prompted_in_their_own_pixels(tmp_path: Path) -> None:
    """A RAS NIfTI's axial slices come to the panel turned by 180 degrees (the patient's right on the
    left, anterior up), with the turn in the case's answer; prompts stay in the slice's own pixels."""
    lps = np.random.default_rng(0).normal(40, 5, (3, 64, 64)).clip(0, 255).astype(np.int16)
    lps[:, :16, :16] = 220  # anterior (first rows) and rightmost (first columns) in LPS
    image = sitk.GetImageFromArray(lps)
    sitk.WriteImage(sitk.DICOMOrient(image, "RAS"), str(tmp_path / "block.nii.gz"))
    project = init_project(tmp_path / "project")
    import_cases(project, [tmp_path / "block.nii.gz"], progress=False)
    project.close()
    with client_for(tmp_path / "project") as client:
        case = client.post("/api/annotate/queue", json={"annotator": "alice"}).json()
        assert case["display"] == {"transpose": False, "flip_rows": True, "flip_columns": True} and case["slice_shape"] == [64, 64]
        png = client.get("/api/annotate/cases/block/slices/1.png", params={"annotator": "alice"})
        shown = np.asarray(Image.open(io.BytesIO(png.content)).convert("L")).astype(float)
        assert shown[:16, :16].mean() > 200 > 100 > shown[16:, 16:].mean()
        # the block is stored bottom right: a box there is a box on the block
        prompted = client.post("/api/annotate/cases/block/prompts", json={"annotator": "alice", "slice": 1, "box": [46, 46, 63, 63]})
        assert prompted.status_code == 200, prompted.text
        assert 1 in prompted.json()["masked_slices"]
        shown = np.asarray(Image.open(io.BytesIO(client.get("/api/annotate/cases/block/slices/1.png", params={"annotator": "alice"}).content)).convert("RGB")).astype(int)
        outline = np.argwhere(np.abs(shown[..., 0] - shown[..., 2]) > 60)
        assert len(outline) and outline.max() < 24  # the mask's outline, drawn around the block in the top left


def test_a_case_that_cannot_be_opened_is_given_back_and_passed_over(tmp_path: Path) -> None:
    """Its scan deleted after import: the queue gives the case back (the annotator is not left
    holding a case the panel never showed) and leases the next one, naming the one passed over;
    with no other case, the queue says why none is given."""
    for value, name in enumerate(("gone", "kept")):  # two images (the same voxels would be one case)
        sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 32, 32), value, np.int16)), str(tmp_path / f"{name}.nii.gz"))
    project = init_project(tmp_path / "project")
    import_cases(project, [tmp_path / "gone.nii.gz", tmp_path / "kept.nii.gz"], progress=False)
    project.close()
    (tmp_path / "gone.nii.gz").unlink()
    with client_for(tmp_path / "project") as client:
        taken = client.post("/api/annotate/queue", json={"annotator": "carol"})
        assert taken.status_code == 200 and taken.json()["name"] == "kept", taken.text
        (passed_over,) = taken.json()["passed_over"]
        assert passed_over.startswith("case gone cannot be opened (") and "it was given back" in passed_over
        refused = client.post("/api/annotate/queue", json={"annotator": "dave"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == passed_over
        counts = client.get("/api/annotate/status").json()["project"]["counts"]
        assert counts["in_review"] == 1 and counts["new"] == 1, counts


def test_a_lease_that_ran_out_is_not_shown_as_held(tmp_path: Path) -> None:
    """alice's lease runs out with nobody taking the case: its record no longer names her as the
    holder (the panel read her expired lease as hers, kept the case on show and said "yours until"
    a time gone), her next action says why, and bob can take the case over."""
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 32, 32), 7, np.int16)), str(tmp_path / "plain.nii.gz"))
    project = init_project(tmp_path / "project", settings=ProjectSettings(lease_minutes=1 / 60))
    import_cases(project, [tmp_path / "plain.nii.gz"], progress=False)
    project.close()
    with client_for(tmp_path / "project") as client:
        taken = client.post("/api/annotate/queue", json={"annotator": "alice"}).json()
        assert taken["lease_owner"] == "alice" and taken["lease_expires"] is not None
        time.sleep(1.5)
        shown = client.get("/api/annotate/cases/plain").json()["case"]
        assert (shown["state"], shown["lease_owner"], shown["lease_expires"]) == ("in_review", None, None)
        refused = client.post("/api/annotate/cases/plain/undo", json={"annotator": "alice"})
        assert refused.status_code == 409 and "your lease on case plain ran out" in refused.json()["error"]
        assert client.post("/api/annotate/queue", json={"annotator": "bob"}).json()["lease_owner"] == "bob"


def test_the_queue_says_a_case_comes_with_work_another_annotator_left(tmp_path: Path) -> None:
    """bob takes over a case alice corrected and let run out: the queue's answer names her and the
    corrections still in force, in the words of `annotate queue` (the panel said nothing of it)."""
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 32, 32), 7, np.int16)), str(tmp_path / "plain.nii.gz"))
    project = init_project(tmp_path / "project", settings=ProjectSettings(lease_minutes=1 / 60))
    import_cases(project, [tmp_path / "plain.nii.gz"], progress=False)
    project.close()
    drawn = np.zeros((32, 32), dtype=bool)
    drawn[8:20, 8:20] = True
    with client_for(tmp_path / "project") as client:
        assert client.post("/api/annotate/queue", json={"annotator": "alice"}).json()["left_by"] is None
        corrected = client.post("/api/annotate/cases/plain/corrections", json={"annotator": "alice", "slice": 0, "mask": encode(drawn)})
        assert corrected.status_code == 200, corrected.text
        time.sleep(1.5)  # alice's lease runs out
        taken = client.post("/api/annotate/queue", json={"annotator": "bob"}).json()
        assert taken["lease_owner"] == "bob" and taken["left_by"] == {
            "annotator": "alice",
            "corrections": 1,
            "said": "left by alice with 1 earlier correction, which this continues from",
        }
