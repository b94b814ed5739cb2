"""The web app end to end in a real headless Chromium: `medsam2 serve` started as a user starts it,
a shared CT lesion case opened, its key-slice box drawn with the mouse, propagated, looked at on
other slices, and the downloaded mask scored against the ground truth and against `medsam2 segment`
with the same box. The final view is saved as test-artifacts/web_e2e_final.png."""

from __future__ import annotations

import contextlib
import io
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import uvicorn
from PIL import Image
from playwright.sync_api import Browser, Page, Response, sync_playwright
from scipy import ndimage
from sqlalchemy import select
from test_annotate_work import write_disc_case
from typer.testing import CliRunner

from medsam2.annotate import import_cases, init_project, open_project
from medsam2.annotate.leases import release
from medsam2.annotate.routes import annotation_router
from medsam2.annotate.schema import InteractionRow
from medsam2.annotate.work import Predictors, WorkSession
from medsam2.cli.demo import key_slice_box
from medsam2.cli.main import app as cli_app
from medsam2.cli.serve import listen
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image, save_mask
from medsam2.io.masks import stored_array
from medsam2.metrics import dice
from medsam2.resources import packaged_file
from medsam2.server import ServerSettings, create_app

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# As root in a container, without the network Chromium would otherwise keep trying to reach.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CASE = "CT_Lesion_000002_03_01_035-047.npz"
IDLE = "document.body.dataset.pending === '0'"
SERVER_START_SECONDS = 180
PROPAGATION_SECONDS = 600


@pytest.fixture(scope="module")
def server_url(shared_data: Path) -> Iterator[str]:
    """`medsam2 serve --data <the CT lesion folder> --port 0`, as a user runs it; its printed URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "medsam2.cli", "serve", "--data", str(shared_data / "ct_lesion"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    output = []
    try:
        while True:
            try:
                output.append(lines.get(timeout=SERVER_START_SECONDS))
            except queue.Empty:
                pytest.fail(f"medsam2 serve printed no URL within {SERVER_START_SECONDS} s: {''.join(output)}")
            found = re.search(r"Open (http://\S+) in a browser", output[-1])
            if found:
                break
            if process.poll() is not None:
                pytest.fail(f"medsam2 serve exited: {''.join(output)}")
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def unexpected(response: Response) -> bool:
    """A failed request (the annotation panel's probe for a project included: it answers 200)."""
    return response.status >= 400


def view_pixels(page: Page, box: tuple[float, float, float, float]) -> np.ndarray:
    """The screen around a box of slice pixels (with a 10-pixel margin), as (rows, columns, RGB)."""
    left, top = page.evaluate(f"medsam2Viewer.imageToClient({box[0] - 10}, {box[1] - 10})")
    right, bottom = page.evaluate(f"medsam2Viewer.imageToClient({box[2] + 10}, {box[3] + 10})")
    clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)


def overlay_pixels(page: Page, box: tuple[float, float, float, float]) -> int:
    """Screen pixels tinted by a mask around a box of slice pixels (the slices are grey: R = G = B)."""
    shot = view_pixels(page, box)
    return int(np.count_nonzero(np.abs(shot[..., 0] - shot[..., 2]) > 60))


def drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press the left button at slice pixel `start`, move to `end` and release it there."""
    begin = page.evaluate(f"medsam2Viewer.imageToClient({start[0]}, {start[1]})")
    finish = page.evaluate(f"medsam2Viewer.imageToClient({end[0]}, {end[1]})")
    page.mouse.move(*begin)
    page.mouse.down()
    page.mouse.move((begin[0] + finish[0]) / 2, (begin[1] + finish[1]) / 2, steps=4)
    page.mouse.move(*finish, steps=4)
    page.mouse.up()


def click(page: Page, x: float, y: float, modifiers: list[str] | None = None) -> None:
    page.click("#view", position=relative(page, x, y), modifiers=modifiers or [])


def relative(page: Page, x: float, y: float) -> dict[str, float]:
    """Where slice pixel (x, y) is in the canvas, for clicks positioned on it."""
    client_x, client_y = page.evaluate(f"medsam2Viewer.imageToClient({x}, {y})")
    box = page.locator("#view").bounding_box()
    return {"x": client_x - box["x"], "y": client_y - box["y"]}


def start_page(browser: Browser, url: str, ready: str = "document.querySelector('#case-select').options.length >= 3") -> tuple[Page, list[str]]:
    """A page on `url`, once `ready` holds (by default: its case list is loaded), and the list its
    script errors, console errors and failed requests go to."""
    # bypass_csp: the page forbids eval, which Playwright's wait_for_function needs.
    # A context of its own, which can open a second tab of the same client (`page.context.new_page()`).
    page = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True, bypass_csp=True).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}") if unexpected(response) else None)
    page.goto(url)
    page.wait_for_function(ready)
    return page, problems


def opened_case_page(browser: Browser, server_url: str) -> tuple[Page, list[str]]:
    """`start_page` with the first data case open and idle, waits cut to 20 s."""
    page, problems = start_page(browser, server_url)
    page.set_default_timeout(20000)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    return page, problems


def wait_prompts(page: Page, count: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('#prompted li').length === {count} && {IDLE}", timeout=PROPAGATION_SECONDS * 1000)


def shown_slice(page: Page) -> int:
    page.wait_for_function(IDLE)
    return int(page.get_attribute("#view", "data-slice"))


def session_info(page: Page) -> dict:
    (session,) = page.evaluate("fetch('/api/sessions').then((response) => response.json())")
    return session


def test_segment_a_lesion_in_the_browser(server_url: str, browser: Browser, shared_data: Path, tmp_path: Path) -> None:
    case = shared_data / "ct_lesion" / CASE
    truth = stored_array(load_image(case), "gts") > 0
    prompt = key_slice_box(truth)
    x1, y1, x2, y2 = (int(v) for v in prompt.box)

    page, problems = start_page(browser, server_url)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function("document.querySelector('#view').dataset.slice !== undefined")

    # The page fits its window whatever the status line says (a long one had widened the view past it).
    page.wait_for_function(IDLE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    edge = page.locator("#edge-right").bounding_box()
    assert page.inner_text("#edge-right") == "L" and edge["x"] + edge["width"] <= 1280

    # Radiology keys: Home to the first slice, arrows down to the key slice.
    page.keyboard.press("Home")
    assert shown_slice(page) == 0
    for _ in range(prompt.slice_index):
        page.keyboard.press("ArrowDown")
    assert shown_slice(page) == prompt.slice_index

    # Draw the key-slice box with the mouse.
    drag(page, (x1, y1), (x2, y2))
    wait_prompts(page, 1)
    (lesion,) = session_info(page)["objects"]
    assert lesion["prompts"] == [
        {"slice": prompt.slice_index, "box": [x1, y1, x2, y2], "points": [], "labels": [], "mask": False, "erased": False}
    ]
    assert overlay_pixels(page, (x1, y1, x2, y2)) > 100

    page.click("#propagate")
    page.wait_for_function(
        f"document.querySelector('#status').textContent.startsWith('Propagated') && {IDLE}",
        timeout=PROPAGATION_SECONDS * 1000,
    )
    assert page.inner_text("#progress-text") == "done"
    lesion_slices = session_info(page)["objects"][0]["slices"]
    assert prompt.slice_index + 1 in lesion_slices and prompt.slice_index - 1 in lesion_slices

    # The masks show on the other slices: one wheel notch down, then two arrow keys up.
    page.mouse.move(*page.evaluate(f"medsam2Viewer.imageToClient({x1}, {y1})"))
    page.mouse.wheel(0, 100)
    assert shown_slice(page) == prompt.slice_index + 1
    assert overlay_pixels(page, box_from_mask(truth[prompt.slice_index + 1])) > 100
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    below = box_from_mask(truth[prompt.slice_index - 1])
    assert shown_slice(page) == prompt.slice_index - 1
    assert overlay_pixels(page, below) > 100
    page.keyboard.press("o")
    assert overlay_pixels(page, below) == 0
    page.keyboard.press("o")

    with page.expect_download() as download:
        page.click("#download")
    web_mask_path = tmp_path / download.value.suggested_filename
    download.value.save_as(web_mask_path)
    assert web_mask_path.name == "CT_Lesion_000002_03_01_035-047_mask.nii.gz"
    web_mask = load_image(web_mask_path).array > 0

    cli_mask_path = tmp_path / "cli.nii.gz"
    result = CliRunner().invoke(
        cli_app, ["segment", str(case), "--box", f"{prompt.slice_index},{x1},{y1},{x2},{y2}", "-o", str(cli_mask_path)]
    )
    assert result.exit_code == 0, result.output
    cli_mask = load_image(cli_mask_path).array > 0
    assert dice(web_mask, truth) == dice(cli_mask, truth) > 0.75
    np.testing.assert_array_equal(web_mask, cli_mask)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_e2e_final.png"))
    assert problems == []


def test_upload_windows_clicks_undo_and_objects_in_the_browser(server_url: str, browser: Browser) -> None:
    """pydicom's CT slice (a vertebra, HU) uploaded through the page: CT window presets, positive and
    negative clicks, undo, a second named object; no Save on server (uploads are in a temporary folder)."""
    ct_slice = packaged_file("pydicom", "pydicom/data/test_files/CT_small.dcm", "pip install pydicom")
    page, problems = start_page(browser, server_url)
    page.set_input_files("#upload", str(ct_slice))
    page.wait_for_function(f"document.querySelector('#case-select').value === 'upload/CT_small.dcm' && {IDLE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '0' && {IDLE}")
    canal = (48, 40, 72, 64)  # the spinal canal, dark in the soft-tissue window
    assert [page.inner_text(f"#edge-{edge}") for edge in ("left", "right", "top", "bottom")] == ["R", "L", "A", "P"]

    soft_tissue = view_pixels(page, canal)
    page.keyboard.press("3")  # the third CT preset: lung, W1500 L-600
    page.wait_for_function(IDLE)
    assert page.input_value("#window-width") == "1500" and page.input_value("#window-preset") == "lung"
    assert np.abs(view_pixels(page, canal) - soft_tissue).mean() > 10

    # A box, taken back with Ctrl+Z.
    drag(page, canal[:2], canal[2:])
    wait_prompts(page, 1)
    assert overlay_pixels(page, canal) > 50
    page.keyboard.press("Control+z")
    wait_prompts(page, 0)
    assert overlay_pixels(page, canal) == 0

    # A click beside the image is no prompt (not one on its edge); a click inside, a Shift+click
    # outside the canal; undo takes back only the latter.
    page.keyboard.press("p")
    click(page, -6, 52)
    page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent === 'No click: the pointer was outside the image.'")
    assert session_info(page)["objects"] == []
    click(page, 60, 52)
    wait_prompts(page, 1)
    click(page, 60, 110, modifiers=["Shift"])
    page.wait_for_function(f"{IDLE} && document.querySelector('#prompted li').textContent.includes('2 points')")
    (canal_object,) = session_info(page)["objects"]
    assert canal_object["prompts"][0]["points"] == [[60, 52], [60, 110]] and canal_object["prompts"][0]["labels"] == [1, 0]
    assert overlay_pixels(page, canal) > 50
    page.click("#undo")
    page.wait_for_function(f"{IDLE} && document.querySelector('#prompted li').textContent.includes('1 point)')")

    # A second object, named, boxed with the mouse.
    page.click("#add-object")
    page.fill("#objects li:nth-child(2) input", "aorta")
    page.keyboard.press("Tab")
    page.keyboard.press("b")
    drag(page, (82, 0), (114, 24))
    wait_prompts(page, 2)
    names = {obj["id"]: obj["name"] for obj in session_info(page)["objects"]}
    assert names == {1: "Object 1", 2: "aorta"}

    # E takes the active object (the aorta) off the slice; the canal stays.
    aorta = (82, 0, 114, 24)
    assert overlay_pixels(page, aorta) > 50
    page.keyboard.press("e")
    page.wait_for_function(f"{IDLE} && document.querySelector('#prompted li:nth-child(2)').textContent.includes('erased')")
    assert page.inner_text("#status").startswith("aorta taken off slice 0.")
    assert overlay_pixels(page, aorta) == 0 and overlay_pixels(page, canal) > 50
    assert session_info(page)["objects"][1]["slices"] == []

    assert page.is_disabled("#save") and "Download" in page.get_attribute("#save", "title")
    assert problems == []


def test_saving_asks_before_replacing_and_a_reload_comes_back_to_the_work(browser: Browser, tmp_path: Path) -> None:
    """Save on server writes next to the case and asks before replacing a mask saved earlier (which
    a later session of the case is told about); reloading the page resumes its session."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(packaged_file("pydicom", "pydicom/data/test_files/CT_small.dcm", "pip install pydicom"), data / "ct.dcm")
    with serving(ServerSettings(data_dir=data)) as url:
        page, problems = start_page(browser, url, "document.querySelector('#case-select').options.length === 1")
        page.click("#open-case")
        page.wait_for_function(f"document.querySelector('#view').dataset.slice === '0' && {IDLE}")
        page.keyboard.press("g")
        assert page.inner_text("#status").startswith("Nothing to propagate yet")
        drag(page, (48, 40), (72, 64))
        wait_prompts(page, 1)

        def save(answer: str | None) -> str:
            if answer is not None:
                page.once("dialog", lambda dialog: dialog.accept() if answer == "accept" else dialog.dismiss())
            page.click("#save")
            page.wait_for_function(f"{IDLE} && /^(Saved|Not saved)/.test(document.querySelector('#status').textContent)")
            return page.inner_text("#status")

        assert save(None) == "Saved ct_mask.nii.gz next to the case."
        first = (data / "ct_mask.nii.gz").stat().st_mtime_ns
        assert save("dismiss") == "Not saved: the earlier mask is kept."
        assert (data / "ct_mask.nii.gz").stat().st_mtime_ns == first
        assert save("accept") == "Saved ct_mask.nii.gz next to the case."

        session = session_info(page)
        page.reload()
        page.wait_for_function(f"document.querySelector('#prompted li') !== null && {IDLE}")
        assert page.inner_text("#status") == "ct.dcm: back to this session's work."
        assert session_info(page)["id"] == session["id"] and overlay_pixels(page, (48, 40, 72, 64)) > 50

        # A second tab on the session (its address), changed there: this tab's next change, made on
        # what it showed, is refused and the tab shows the session as it now is.
        other = page.context.new_page()  # a tab of the same browser (sessions are the client's own)
        other_problems: list[str] = []
        other.on("response", lambda response: other_problems.append(f"{response.status} {response.url}") if unexpected(response) else None)
        other.goto(page.url)
        other.wait_for_function(f"document.querySelector('#prompted li') !== null && {IDLE}")
        other.click("#add-object")
        other.keyboard.press("b")
        drag(other, (10, 10), (30, 30))
        wait_prompts(other, 2)
        view_top = "document.querySelector('main').getBoundingClientRect().top"
        top_before = page.evaluate(view_top)
        drag(page, (80, 80), (100, 100))
        page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent.startsWith('Not done: this session was changed in another tab')")
        assert page.evaluate(view_top) == top_before  # a long message does not push the view down
        assert page.locator("#prompted li").count() == 2 and [p["slice"] for p in session_info(page)["objects"][0]["prompts"]] == [0]
        assert [problem for problem in problems if problem.startswith("412 ")] and other_problems == []
        other.close()

        # Opening a case asks before closing a session with work (Cancel keeps it).
        questions: list[str] = []
        page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        page.click("#open-case")
        page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent === 'Still on ct.dcm.'")
        assert questions == ["Open ct.dcm? The work on ct.dcm (2 objects) closes: Download or Save its mask first to keep it."]
        assert session_info(page)["id"] == session["id"]
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#open-case")  # the same case afresh: told about the saved mask
        page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent.includes('Saved earlier')")
        assert page.inner_text("#status").endswith("Saved earlier beside this case: ct_mask.nii.gz.")
        assert overlay_pixels(page, (48, 40, 72, 64)) == 0

        # The saved mask loads back for correction; a label map from this computer replaces it (after asking).
        def load(start: Callable[[], None], answer: str | None = None) -> str:
            if answer is not None:
                page.once("dialog", lambda dialog: dialog.accept() if answer == "accept" else dialog.dismiss())
            page.evaluate("document.querySelector('#status').textContent = ''")
            start()
            page.wait_for_function(f"{IDLE} && /^(?!Loading)./.test(document.querySelector('#status').textContent)")
            return page.inner_text("#status")

        assert page.is_visible("#load-saved") and not page.is_visible("#saved-mask")
        assert load(lambda: page.click("#load-saved")).startswith("Loaded ct_mask.nii.gz. Object 1: 1 slice.")
        assert overlay_pixels(page, (48, 40, 72, 64)) > 50
        image = load_image(data / "ct.dcm")
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[0, 10:30, 10:30], labels[0, 90:110, 90:110] = 2, 5
        save_mask(labels, like=image, path=tmp_path / "edited.nii.gz")
        # The pickers offer the formats the server takes (".nii.gz" as ".gz": browsers match two-part suffixes unevenly).
        assert page.get_attribute("#mask-upload", "accept") == ".nii,.gz,.nrrd,.mha,.npz,.png,.dcm"
        assert page.get_attribute("#upload", "accept").startswith(".gz,.nii,.nrrd,.mha,.dcm,.npz,.png,")
        upload = lambda: page.set_input_files("#mask-upload", str(tmp_path / "edited.nii.gz"))  # noqa: E731
        assert load(upload, "accept").startswith("Loaded edited.nii.gz. Object 2: 1 slice; Object 5: 1 slice.")
        assert page.locator("#objects li").count() == 2
        assert overlay_pixels(page, (48, 40, 72, 64)) == 0 and overlay_pixels(page, (90, 90, 109, 109)) > 50
        assert session_info(page)["objects"][0]["prompts"][0]["mask"] is True
        # 409 is the page's question to the user, 412 the stale tab's refusal (answered above): not failures.
        assert [problem for problem in problems if not any(code in problem for code in ("409", "412"))] == []
        page.close()

        # An address naming a session the server no longer has (it restarted): the page says so and
        # drops it from the address (it said nothing, and kept it).
        stale, _ = start_page(browser, f"{url}#session=from-before-a-restart", "document.querySelector('#status').textContent.startsWith('This session')")
        assert stale.inner_text("#status") == "This session is no longer on the server (it was restarted). Choose a case and press Open."
        assert stale.evaluate("location.hash") == ""
        stale.close()


def test_a_coronal_view_of_a_ras_scan_is_shown_head_up_and_boxed_in_its_own_pixels(server_url: str, browser: Browser, tmp_path: Path) -> None:
    """A RAS NIfTI (rows running up the patient, columns to his right) with a bright block where he
    is superior and rightmost, opened in the coronal view: the block shows in the top left (head
    up, his right on the screen's left), and a box dragged around it on the screen is recorded in
    the slice's own pixels, where the block is stored bottom right."""
    lps = np.full((40, 30, 56), 60, np.int16)
    lps[-10:, :, :12] = 250  # superior (last z), every y, rightmost (first x in LPS)
    image = sitk.GetImageFromArray(lps)
    image.SetSpacing((1.0, 1.0, 1.5))
    path = tmp_path / "block_ras.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(image, "RAS"), str(path))

    page, problems = start_page(browser, server_url)
    page.set_input_files("#upload", str(path))
    page.wait_for_function(f"document.querySelector('#case-select').value === 'upload/{path.name}' && {IDLE}")
    page.select_option("#axis", "coronal")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '15' && {IDLE}")
    info = session_info(page)
    assert info["axis"] == "coronal" and info["shape"] == [30, 40, 56]
    assert info["display"] == {"transpose": False, "flip_rows": True, "flip_columns": True}
    edges = [page.inner_text(f"#edge-{edge}") for edge in ("left", "right", "top", "bottom")]
    assert edges == ["R", "L", "S", "I"]  # the patient's side at each edge of the view
    # Its coronal slices are numbered from the back forwards: the next slice in reading order (to
    # the back) is the lower number, and the slider runs right to left.
    assert info["slice_step"] == -1 and page.get_attribute("#slice", "dir") == "rtl"
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '14' && {IDLE}")
    page.keyboard.press("End")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '0' && {IDLE}")
    page.keyboard.press("Home")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '29' && {IDLE}")
    page.keyboard.press("PageDown")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '19' && {IDLE}")
    page.keyboard.press(" ")  # playing goes in reading order too (it went up from 19)
    page.wait_for_function("document.querySelector('#view').dataset.slice !== '19'")
    page.keyboard.press(" ")
    assert 15 <= int(page.get_attribute("#view", "data-slice")) <= 18
    page.fill("#slice", "15")  # the slider's own value is the slice number
    page.wait_for_function(f"document.querySelector('#view').dataset.slice === '15' && {IDLE}")
    # The slider keeps the focus (as after a drag): the shortcuts still work (they were swallowed).
    assert page.evaluate("document.activeElement.id") == "slice"
    shown = page.is_checked("#show-overlay")
    page.keyboard.press("o")
    assert page.is_checked("#show-overlay") != shown
    page.keyboard.press("o")

    # Where the slice lies on the screen, and where the bright block is drawn within it.
    corners = [page.evaluate(f"medsam2Viewer.imageToClient({x}, {y})") for x, y in ((-0.5, -0.5), (55.5, 39.5))]
    left, top = np.min(corners, axis=0)
    right, bottom = np.max(corners, axis=0)
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip={"x": left, "y": top, "width": right - left, "height": bottom - top}))).convert("L"))
    bright, _ = ndimage.label(shot > 200)  # the block, apart from the corner text over the view
    rows, columns = np.nonzero(bright == np.argmax(np.bincount(bright.ravel())[1:]) + 1)
    assert rows.max() < 0.3 * shot.shape[0] and columns.max() < 0.3 * shot.shape[1]  # top left: 10 of 40 rows, 12 of 56 columns
    assert rows.min() < 3 and columns.min() < 3

    page.mouse.move(left + columns.min() + 1, top + rows.min() + 1)
    assert page.inner_text("#corner-info").endswith("X 55 Y 39")  # the screen's top left is the stored bottom right
    page.mouse.down()
    page.mouse.move(left + columns.max() - 1, top + rows.max() - 1, steps=6)
    page.mouse.up()
    wait_prompts(page, 1)
    (block,) = session_info(page)["objects"]
    x1, y1, x2, y2 = block["prompts"][0]["box"]
    # stored: rows 30..39 (superior, as z runs up), columns 44..55 (rightmost, as x runs right)
    assert 30 <= y1 <= 31 and y2 == 39 and 44 <= x1 <= 45 and x2 == 55

    # Coronal slices of the 13-section CT case are 13 rows high: the page says so on opening.
    page.select_option("#case-select", f"data/{CASE}")
    page.once("dialog", lambda dialog: dialog.accept())  # the block's box closes with its session
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('too narrow') && {IDLE}")
    # The server's warning is a sentence of the status line (it was joined on as ". coronal slices ...").
    assert "(wide×high). Coronal slices are 512×13 pixels (wide×high): too narrow for the model" in page.inner_text("#status")

    # The View choice stays coronal for the next case; a picture has one view and opens as it is.
    picture = tmp_path / "flat.png"
    Image.fromarray(np.full((48, 64), 90, np.uint8)).save(picture)
    page.set_input_files("#upload", str(picture))
    page.wait_for_function(f"document.querySelector('#case-select').value === 'upload/flat.png' && {IDLE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('no coronal view') && {IDLE}")
    assert session_info(page)["shape"] == [1, 48, 64] and page.input_value("#axis") == "coronal"
    assert problems == []


def test_the_api_docs_render_offline(server_url: str, browser: Browser) -> None:
    """Swagger UI draws the OpenAPI schema (3.1) from this server's files alone: any request
    elsewhere fails the test."""
    page, problems = start_page(browser, server_url)
    page.on("request", lambda request: None if request.url.startswith((server_url, f"blob:{server_url.rstrip('/')}")) else problems.append(f"outside: {request.url}"))
    page.goto(server_url + "docs")
    page.wait_for_selector("[data-path='/api/sessions/{session_id}/propagate']", timeout=30_000)
    assert problems == []


@contextlib.contextmanager
def serving(settings: ServerSettings, project: Path | None = None) -> Iterator[str]:
    """The app `medsam2 serve` builds from `settings`, served by uvicorn on a free loopback port in
    this process (with the annotation project `project`, if given); its URL."""
    app = create_app(settings, routers=[annotation_router(project)])
    listener = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


@pytest.fixture
def annotation_server_url(tmp_path: Path, draw_recist) -> Iterator[str]:
    """The app with an annotation project of one synthetic case (a disc with a RECIST marker), served
    by uvicorn in this process (what `medsam2 serve --annotate PROJECT` runs)."""
    write_disc_case(tmp_path / "disc.npz", draw_recist)
    project = init_project(tmp_path / "project")
    import_cases(project, [tmp_path / "disc.npz"], progress=False)
    project.close()
    with serving(ServerSettings(), tmp_path / "project") as url:
        yield url


def wait_message(page: Page, start: str) -> None:
    """Until the annotation panel's message starts with `start` and no request is pending."""
    page.wait_for_function(f"document.querySelector('#annotate-message').textContent.startsWith({start!r}) && {IDLE}")


def take_next_case(page: Page, annotator: str) -> None:
    """Type the annotator's name and take the next case (the synthetic disc) in the panel."""
    page.fill("#annotate-annotator", annotator)
    page.keyboard.press("Tab")  # the name is kept for the next visit
    page.click("#annotate-next")
    # the first take presegments the case (half a minute on a busy 2-core machine)
    page.wait_for_function(f"document.querySelector('#annotate-case').textContent.startsWith('disc: in review') && {IDLE}", timeout=PROPAGATION_SECONDS * 1000)


def box_the_disc(page: Page) -> None:
    """Drag a box around the disc on the slice shown, on the panel's canvas (slice pixels are 96 x 96)."""
    canvas = page.locator("#annotate-view").bounding_box()
    scale = canvas["width"] / 96
    page.mouse.move(canvas["x"] + 26 * scale, canvas["y"] + 26 * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 66 * scale, canvas["y"] + 70 * scale, steps=5)
    page.mouse.up()
    wait_message(page, "prompt recorded")


def stored_record(folder: Path) -> tuple[dict, list[dict]]:
    """The disc case's row and its interactions, read from the project's database (not the API)."""
    project = open_project(folder)
    try:
        with project.transaction() as session:
            row = project.case(session, "disc")
            case = {c: getattr(row, c) for c in ("state", "lease_owner", "lease_expires", "finished_by", "finished_at")}
            history = session.scalars(select(InteractionRow).where(InteractionRow.case_id == row.id).order_by(InteractionRow.id))
            events = [
                {"id": i.id, "kind": i.kind, "annotator": i.annotator, "at": i.created_at, "undoes": i.undoes_id, "data": i.data}
                for i in history
            ]
    finally:
        project.close()
    return case, events


def test_the_annotation_panel_takes_corrects_and_accepts_a_case(annotation_server_url: str, browser: Browser, tmp_path: Path) -> None:
    page, problems = start_page(browser, annotation_server_url, f"document.querySelector('#annotate-counts') && {IDLE}")
    assert page.inner_text("#annotate-counts").startswith("new 1 · presegmented 0 · in review 0")
    take_next_case(page, "alice")
    assert "in review 1" in page.inner_text("#annotate-counts")

    box_the_disc(page)
    page.click("#annotate-panel [data-action=accept]")
    wait_message(page, "accepted")
    assert "in review 0 · accepted 1" in page.inner_text("#annotate-counts")

    history = page.evaluate("fetch('/api/annotate/cases/disc').then((response) => response.json())")["history"]
    assert [(event["kind"], event["annotator"]) for event in history] == [
        ("lease", "alice"), ("presegment", "alice"), ("prompt", "alice"), ("accept", "alice")
    ]
    project = open_project(tmp_path / "project")
    try:
        assert project.status().counts["accepted"] == 1
    finally:
        project.close()
    assert problems == []


def test_the_annotation_panel_undoes_releases_and_rejects(annotation_server_url: str, browser: Browser, tmp_path: Path) -> None:
    """alice boxes the disc and undoes it, then releases the case; bob takes it over and rejects it
    (the page asks why). After each step the project's database holds the case's state and every
    interaction with its annotator and time."""
    folder = tmp_path / "project"
    started = datetime.now(timezone.utc)
    page, problems = start_page(browser, annotation_server_url, f"document.querySelector('#annotate-counts') && {IDLE}")
    take_next_case(page, "alice")
    box_the_disc(page)
    assert page.inner_text("#annotate-message") == "prompt recorded (1 in force)"

    page.click("#annotate-panel [data-action=undo]")
    wait_message(page, "undone")
    case, events = stored_record(folder)
    assert case["state"] == "in_review" and case["lease_owner"] == "alice" and case["lease_expires"] > started
    assert [(e["kind"], e["annotator"]) for e in events] == [
        ("lease", "alice"), ("presegment", "alice"), ("prompt", "alice"), ("undo", "alice")
    ]
    assert events[3]["undoes"] == events[2]["id"]  # the undo names the prompt it took back
    assert page.evaluate("fetch('/api/annotate/cases/disc').then((r) => r.json())")["case"]["state"] == "in_review"

    page.click("#annotate-panel [data-action=release]")
    wait_message(page, "released for the next annotator")
    assert page.inner_text("#annotate-case") == "disc: presegmented"
    assert page.inner_text("#annotate-counts").startswith("new 0 · presegmented 1 · in review 0")
    case, events = stored_record(folder)
    assert case["state"] == "presegmented" and case["lease_owner"] is None and case["lease_expires"] is None
    assert (events[-1]["kind"], events[-1]["annotator"]) == ("release", "alice") and len(events) == 5

    take_next_case(page, "bob")  # the same page, another annotator: the released case with its record
    # A reload mid-work opens the case bob holds again (the panel said "No case taken.").
    page.reload()
    page.wait_for_function(f"document.querySelector('#annotate-case')?.textContent.startsWith('disc: in review, yours until') && {IDLE}")
    # Cancel in the reject dialog rejects nothing (it rejected with an empty reason).
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#annotate-panel [data-action=reject]")
    wait_message(page, "not rejected")
    assert stored_record(folder)[0]["state"] == "in_review"
    page.once("dialog", lambda dialog: dialog.accept("motion artefact"))
    page.click("#annotate-panel [data-action=reject]")
    wait_message(page, "rejected")
    assert page.inner_text("#annotate-case") == "disc: rejected"
    assert "in review 0 · accepted 0 · rejected 1" in page.inner_text("#annotate-counts")
    finished = datetime.now(timezone.utc)
    case, events = stored_record(folder)
    assert case["state"] == "rejected" and case["finished_by"] == "bob" and case["lease_owner"] is None
    assert [(e["kind"], e["annotator"]) for e in events[5:]] == [("lease", "bob"), ("reject", "bob")]
    assert events[-1]["data"] == {"reason": "motion artefact"}
    times = [e["at"] for e in events]
    assert started <= times[0] and times == sorted(times) and times[-1] == case["finished_at"] <= finished
    assert page.evaluate("fetch('/api/annotate/queue', {method: 'POST', headers: {'Content-Type': 'application/json'}, "
                         "body: JSON.stringify({annotator: 'carol'})}).then((r) => r.status)") == 204  # nothing left
    assert problems == []


def test_the_annotation_panel_shows_a_ras_scan_turned_in_square_millimetres(tmp_path: Path, browser: Browser) -> None:
    """A RAS NIfTI of 2 mm rows and 1 mm columns, with a bright block where the patient is anterior
    and rightmost: the panel shows it top left (anterior up, his right on the left) in a picture
    twice as tall as its pixel rows, and a box dragged around it on the screen is recorded in the
    slice's own pixels, where the block is stored bottom right."""
    lps = np.full((3, 30, 40), 40, np.int16)
    lps[:, :10, :12] = 230  # anterior (first rows), rightmost (first columns) in LPS
    image = sitk.GetImageFromArray(lps)
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(sitk.DICOMOrient(image, "RAS"), str(tmp_path / "block.nii.gz"))
    project = init_project(tmp_path / "project")
    import_cases(project, [tmp_path / "block.nii.gz"], progress=False)
    project.close()
    with serving(ServerSettings(), tmp_path / "project") as url:
        page, problems = start_page(browser, url, f"document.querySelector('#annotate-counts') && {IDLE}")
        page.fill("#annotate-annotator", "alice")
        page.click("#annotate-next")
        page.wait_for_function(f"document.querySelector('#annotate-case').textContent.startsWith('block: in review') && {IDLE}")
        page.wait_for_function("document.querySelector('#annotate-view').height !== 256")
        canvas = page.locator("#annotate-view").bounding_box()
        assert canvas["height"] / canvas["width"] == pytest.approx(60 / 40, abs=0.02)  # 30 rows of 2 mm, 40 columns of 1 mm
        assert page.get_attribute("#annotate-slice", "dir") == "rtl"  # axial slices stored feet first: head on the left
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=canvas))).convert("L"))
        rows, columns = np.nonzero(shot > 200)
        assert rows.max() < 0.4 * shot.shape[0] and columns.max() < 0.4 * shot.shape[1]  # 10 of 30 rows, 12 of 40 columns
        page.mouse.move(canvas["x"] + columns.min() + 2, canvas["y"] + rows.min() + 2)
        page.mouse.down()
        page.mouse.move(canvas["x"] + columns.max() - 2, canvas["y"] + rows.max() - 2, steps=5)
        page.mouse.up()
        wait_message(page, "prompt recorded")
        opened = open_project(tmp_path / "project")
        try:
            with opened.transaction() as session:
                (prompt,) = session.scalars(select(InteractionRow).where(InteractionRow.kind == "prompt"))
                x1, y1, x2, y2 = prompt.data["box"]
        finally:
            opened.close()
        # stored: rows 20..29 (anterior, as RAS rows run forwards), columns 28..39 (rightmost)
        assert (x1, y1, x2, y2) == (28, 20, 39, 29)
        assert problems == []


def test_the_annotation_panel_follows_what_commands_change_meanwhile(annotation_server_url: str, browser: Browser, tmp_path: Path) -> None:
    """A prompt recorded by a command while alice's panel is open: her next box goes on top of it
    (was refused as "changed elsewhere", the view stale); the case released by a command: her
    next action is refused and the panel shows the case as it now is, the box drawn gone."""
    folder = tmp_path / "project"
    page, problems = start_page(browser, annotation_server_url, f"document.querySelector('#annotate-counts') && {IDLE}")
    take_next_case(page, "alice")
    shown = int(page.input_value("#annotate-slice"))
    project = open_project(folder)
    try:
        WorkSession(project, "disc", "alice", Predictors("cpu")).add_prompt(shown, box=(30, 30, 62, 66))
    finally:
        project.close()
    box_the_disc(page)
    assert [event["kind"] for event in stored_record(folder)[1]][-2:] == ["prompt", "prompt"]

    project = open_project(folder)
    try:
        release(project, "disc", "alice")
    finally:
        project.close()
    page.click("#annotate-panel [data-action=undo]")
    page.wait_for_function(f"document.querySelector('#annotate-case').textContent === 'disc: presegmented' && {IDLE}")
    assert "is not leased to alice; take a case (Next case in the web app" in page.inner_text("#annotate-message")
    assert [event["kind"] for event in stored_record(folder)[1]][-1] == "release"  # the undo was not recorded
    # nor is the case shown to her any longer (its slices were, from the session kept open)
    assert page.evaluate("fetch('/api/annotate/cases/disc/slices/0.png?annotator=alice').then((r) => r.status)") == 409

    # released again while she looks through the slices: the next slice reads the server's reason
    # (an <img> could only say it failed to load)
    take_next_case(page, "alice")
    project = open_project(folder)
    try:
        release(project, "disc", "alice")
    finally:
        project.close()
    page.eval_on_selector("#annotate-slice", "(s) => { s.value = String(Number(s.value) + 1); s.dispatchEvent(new Event('input')); }")
    page.wait_for_function(f"document.querySelector('#annotate-case').textContent === 'disc: presegmented' && {IDLE}")
    assert "is not leased to alice; take a case (Next case in the web app" in page.inner_text("#annotate-message")
    assert [problem for problem in problems if "409" not in problem] == []


def test_a_name_typed_into_an_object_field_goes_to_it(server_url: str, browser: Browser) -> None:
    """Clicking into an object's name field and typing names the object: the click had rebuilt the
    list and dropped the focus, so the letters went to the shortcuts ("lesion": E erased its mask)."""
    page, problems = start_page(browser, server_url)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    drag(page, (200, 200), (260, 260))
    wait_prompts(page, 1)
    page.click("#objects li input")
    page.keyboard.press("Control+a")
    page.keyboard.type("lesion")
    page.keyboard.press("Enter")
    page.wait_for_function(f"{IDLE} && document.querySelector('#prompted li').textContent.includes('lesion')")
    (lesion,) = session_info(page)["objects"]
    assert lesion["name"] == "lesion" and not lesion["prompts"][0]["erased"] and lesion["slices"]
    assert page.is_checked("#show-overlay")  # O, among the letters, had hidden the masks
    assert problems == []


def test_a_slice_that_cannot_load_is_not_shown_as_another_and_the_page_says_why(browser: Browser, tmp_path: Path) -> None:
    """Scrolling to a slice once the session is closed (or the server stopped) leaves the view blank
    and says why: the previous slice stayed on screen under the new slice's number, silently; and a
    server that does not answer is said to be one, not "Failed to fetch"."""
    data = tmp_path / "data"
    data.mkdir()
    volume = np.repeat(np.arange(10, dtype=np.int16)[:, None, None] * 20 + 40, 48, axis=1).repeat(48, axis=2)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(data / "steps.nii.gz"))
    with serving(ServerSettings(data_dir=data)) as url:
        page, problems = start_page(browser, url, "document.querySelector('#case-select').options.length === 1")
        page.click("#open-case")
        page.wait_for_function(f"document.querySelector('#view').dataset.slice === '5' && {IDLE}")
        middle = (20, 20, 27, 27)
        assert view_pixels(page, middle)[12:-12, 12:-12].mean() > 40  # the slice, grey

        page.evaluate(f"fetch('/api/sessions/{session_info(page)['id']}', {{method: 'DELETE'}})")
        page.fill("#slice", "0")  # a slice not loaded ahead of time
        page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent.startsWith('This session')")
        assert page.inner_text("#status").endswith("Open the case again.")
        assert shown_slice(page) == 0 and view_pixels(page, middle)[12:-12, 12:-12].max() < 10  # blank, not slice 5
    page.click("#open-case")
    page.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent.startsWith('The server does not answer')")
    assert [problem for problem in problems if not problem.startswith(("404 ", "Failed to load resource"))] == []


def test_a_closed_page_gives_its_sessions_place_to_another_browser(browser: Browser, tmp_path: Path) -> None:
    """A browser tab closed with its case open held its place on a full server for the idle time
    (an hour): another browser was told the server is full. The page says it is gone as it goes."""
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 48, 48), 60, np.int16)), str(data / "flat.nii.gz"))
    ready = "document.querySelector('#case-select').options.length === 1"
    with serving(ServerSettings(data_dir=data, max_sessions=1)) as url:
        first, problems = start_page(browser, url, ready)
        first.click("#open-case")
        first.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
        second, second_problems = start_page(browser, url, ready)  # a browser of its own (its own context)
        second.click("#open-case")
        second.wait_for_function(f"{IDLE} && document.querySelector('#status').textContent.includes('its limit')")
        first.goto("about:blank")  # the tab goes
        second.click("#open-case")
        second.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
        assert second.inner_text("#status").startswith("flat.nii.gz: 4 slices")
    assert problems == [] and [problem for problem in second_problems if not problem.startswith(("503 ", "Failed to load resource"))] == []


def test_a_narrow_window_still_shows_the_status_line(server_url: str, browser: Browser) -> None:
    """In an 800-pixel window the header's controls took the whole row and squeezed the status line
    to nothing: what the page said (segmented, failed, closed) could not be seen."""
    page, problems = start_page(browser, server_url)
    page.set_viewport_size({"width": 800, "height": 500})
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    line = page.locator("#status").bounding_box()
    assert line["width"] > 200 and line["x"] + line["width"] <= 800 and page.inner_text("#status").startswith(CASE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 800 and page.locator("#view").bounding_box()["height"] > 250
    assert problems == []


def test_resizing_the_window_keeps_the_zoom(server_url: str, browser: Browser) -> None:
    """A resize refitted the slice to the view: the zoom a user had set was lost on every change of
    the window's size. It stays, as large against the view as it was."""
    page, problems = start_page(browser, server_url)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")

    def shown_width() -> float:  # client pixels along 100 slice pixels
        return page.evaluate("Math.hypot(...[0, 1].map((i) => medsam2Viewer.imageToClient(100, 0)[i] - medsam2Viewer.imageToClient(0, 0)[i]))")

    fitted = shown_width()
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.wait_for_timeout(100)
    assert shown_width() == pytest.approx(1.25**2 * fitted, rel=0.01)
    page.set_viewport_size({"width": 1000, "height": 640})
    page.wait_for_timeout(300)
    zoomed = shown_width()
    page.keyboard.press("0")  # fit to the view
    page.wait_for_timeout(100)
    assert zoomed / shown_width() == pytest.approx(1.25**2, rel=0.1)
    assert problems == []


def test_drawing_a_box_stops_playing_so_it_lands_where_it_was_started(server_url: str, browser: Browser) -> None:
    page, problems = start_page(browser, server_url)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    page.keyboard.press(" ")
    page.wait_for_timeout(300)
    start = page.evaluate("medsam2Viewer.imageToClient(200, 200)")
    page.mouse.move(*start)
    page.mouse.down()
    pressed_on = int(page.get_attribute("#view", "data-slice"))
    assert page.inner_text("#play") == "▶"
    page.mouse.move(start[0] + 30, start[1] + 30, steps=4)
    page.wait_for_timeout(400)  # playing, several slices would have gone by
    page.mouse.move(*page.evaluate("medsam2Viewer.imageToClient(260, 260)"), steps=4)
    page.mouse.up()
    wait_prompts(page, 1)
    assert [prompt["slice"] for prompt in session_info(page)["objects"][0]["prompts"]] == [pressed_on]
    assert problems == []


def test_propagation_goes_only_the_way_chosen(server_url: str, browser: Browser, shared_data: Path) -> None:
    """The page always propagated both ways, though the API takes a direction: a user who wants the
    object followed only up (or down) from the key slice had to erase the other side afterwards. The
    way is chosen in reading order, as the arrow keys step."""
    truth = stored_array(load_image(shared_data / "ct_lesion" / CASE), "gts") > 0
    prompt = key_slice_box(truth)
    x1, y1, x2, y2 = (int(v) for v in prompt.box)
    page, problems = start_page(browser, server_url)
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    page.keyboard.press("Home")
    for _ in range(prompt.slice_index):
        page.keyboard.press("ArrowDown")
    assert shown_slice(page) == prompt.slice_index
    drag(page, (x1, y1), (x2, y2))
    wait_prompts(page, 1)
    step = session_info(page)["slice_step"]

    def propagated(way: str) -> list[int]:
        page.focus("#propagate-direction")  # chosen as a user does, the list holding the keys
        page.select_option("#propagate-direction", way)
        page.keyboard.press("g")  # the choice made, the keys are the view's again
        page.wait_for_function(
            f"document.querySelector('#status').textContent.startsWith('Propagated') && {IDLE}", timeout=PROPAGATION_SECONDS * 1000
        )
        page.evaluate("document.querySelector('#status').textContent = ''")
        return [(slice_index - prompt.slice_index) * step for slice_index in session_info(page)["objects"][0]["slices"]]

    back = propagated("back")
    assert min(back) < 0 and max(back) == 0  # up from the key slice only
    both = propagated("onward")
    assert set(back) < set(both) and max(both) > 0
    assert problems == []


def test_before_a_case_is_open_its_controls_are_disabled_not_failing(server_url: str, browser: Browser) -> None:
    """Before a case was opened, Download, Save, Propagate, Undo, Erase and Play were enabled and each
    put "Cannot read properties of null (reading 'id')" on the status line; a window typed into W threw
    and the status said it was set. They are disabled until a case is open, and work then."""
    page, problems = start_page(browser, server_url)
    page.set_default_timeout(20000)
    assert page.get_attribute("#view", "data-slice") is None  # no case opened by itself
    controls = ["#propagate", "#undo", "#erase", "#download", "#save", "#play", "#window-width", "#window-level", "#window-preset"]
    assert [control for control in controls if page.is_enabled(control)] == []
    page.select_option("#case-select", f"data/{CASE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#view').dataset.slice !== undefined && {IDLE}")
    assert [control for control in controls if control != "#undo" and page.is_disabled(control)] == []
    assert page.is_disabled("#undo")  # nothing to take back yet
    page.fill("#window-width", "400")
    page.press("#window-width", "Enter")
    assert page.inner_text("#status").startswith("Window W400")
    assert problems == []


def test_deleting_an_object_says_so_and_takes_its_mask_off_the_view(server_url: str, browser: Browser) -> None:
    """Deleting an object left the status line on the action before it (a box's "segmented on
    slice ..."), as if nothing had happened; it says the object is deleted, and its mask is gone."""
    page, problems = opened_case_page(browser, server_url)
    page.on("dialog", lambda dialog: dialog.accept())
    box = (246, 273, 276, 322)
    drag(page, box[:2], box[2:])
    wait_prompts(page, 1)
    assert overlay_pixels(page, box) > 100
    page.click("#objects li button")
    wait_prompts(page, 0)
    assert page.inner_text("#status") == "Deleted Object 1."
    assert overlay_pixels(page, box) == 0
    assert page.is_disabled("#undo")
    assert problems == []


def test_upload_and_load_file_can_be_reached_and_used_with_the_keyboard(server_url: str, browser: Browser) -> None:
    """Upload… and Load file… are labels over hidden file inputs: Tab went past both, so a user on the
    keyboard alone could neither upload a scan nor load a mask. Tab reaches them, Enter opens the chooser."""
    page, problems = opened_case_page(browser, server_url)
    # Playwright turns on Chromium's chooser interception when a listener first asks for it, a
    # message that could land after the Enter below: the first chooser then went to the (headless,
    # invisible) native dialog, and the test failed one run in five. A listener from the start.
    page.on("filechooser", lambda chooser: None)
    for before, chooser_of in [("#open-case", "upload"), ("#download", "mask-upload")]:
        page.focus(before)
        for _ in range(4):  # past Save on server and the (maybe hidden) saved-mask controls
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.contains(document.getElementById('{chooser_of}'))"):
                break
        assert page.evaluate(f"document.activeElement.contains(document.getElementById('{chooser_of}'))")
        with page.expect_file_chooser(timeout=5000) as chooser:
            page.keyboard.press("Enter")
        assert chooser.value.element.get_attribute("id") == chooser_of
    assert page.inner_text("#play") == "▶"
    assert problems == []


def test_a_prompt_or_undo_during_a_propagation_says_to_wait_not_another_tab(server_url: str, browser: Browser) -> None:
    """A box drawn (or Ctrl+Z pressed) while the page's own propagation ran was refused with "this
    session was changed in another tab meanwhile", in the only tab there was. The page says to wait."""
    page, problems = opened_case_page(browser, server_url)
    box = (246, 273, 276, 322)
    drag(page, box[:2], box[2:])
    wait_prompts(page, 1)
    held = []  # the propagation request, held back so that it is surely still running
    page.route("**/propagate", lambda route: held.append(route))
    page.evaluate("document.querySelector('#propagate').click(); document.querySelector('#status').textContent = ''")
    page.wait_for_function("document.querySelector('#propagate').disabled")
    page.wait_for_timeout(100)
    drag(page, (10, 10), (50, 50))
    page.wait_for_function("document.querySelector('#status').textContent !== ''")
    said = page.inner_text("#status")
    page.keyboard.press("Control+z")
    undone = page.inner_text("#status")
    held[0].continue_()
    page.wait_for_function(f"document.querySelector('#status').textContent.startsWith('Propagated') && {IDLE}", timeout=PROPAGATION_SECONDS * 1000)
    assert said.startswith("Propagating: prompt again when it is done") and "another tab" not in said
    assert undone.startswith("Propagating: undo when it is done")
    assert [len(entry["prompts"]) for entry in session_info(page)["objects"]] == [1]  # the box kept, nothing added
    assert problems == []


def test_keys_with_nothing_to_do_say_so(server_url: str, browser: Browser, tmp_path: Path) -> None:
    """Ctrl+Z with nothing to undo left the last action's message up, as if it had been taken back;
    a number key on an image without window presets (help lists 1 … 7), or past them, did nothing."""
    page, problems = opened_case_page(browser, server_url)  # an npz of no stated modality: no presets
    page.keyboard.press("Control+z")
    assert page.inner_text("#status") == "Nothing to undo."
    page.keyboard.press("1")
    assert page.inner_text("#status").startswith("Window presets are for CT; this image has none")
    # pydicom's CT slice under a name of its own (an earlier test uploads it as it is)
    ct_slice = shutil.copy(packaged_file("pydicom", "pydicom/data/test_files/CT_small.dcm", "pip install pydicom"), tmp_path / "presets.dcm")
    page.set_input_files("#upload", str(ct_slice))
    page.wait_for_function(f"document.querySelector('#case-select').value === 'upload/presets.dcm' && {IDLE}")
    page.click("#open-case")
    page.wait_for_function(f"document.querySelector('#status').textContent.startsWith('presets.dcm') && {IDLE}")
    page.keyboard.press("8")
    assert page.inner_text("#status") == "Window presets are 1 to 7."
    assert page.input_value("#window-preset") == ""
    assert problems == []
