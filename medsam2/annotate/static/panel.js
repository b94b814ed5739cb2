// The annotation panel of the medsam2 page: take the next case of the server's annotation project,
// correct it with boxes on its slices, undo, and accept, reject or release it. Every action goes to
// /api/annotate (through the page's request helper, /static/api.js) and is recorded there; the panel
// stays hidden when the server has no project (GET /api/annotate/status answers {"project": null}).

import { api, setPending } from "/static/api.js";
import { shownSize, shownToSlice } from "/static/display.js";

const API = "/api/annotate";

function call(path, options) {
  return api(API + path, options);
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  Object.entries(attributes).forEach(([key, value]) => node.setAttribute(key, value));
  node.textContent = text;
  return node;
}

function buildPanel(project) {
  const section = element("section", { id: "annotate-panel" });
  section.append(element("h2", {}, `Annotation: ${project.name}`));
  const counts = element("p", { id: "annotate-counts" });
  const who = element("input", { id: "annotate-annotator", placeholder: "your name", "aria-label": "Annotator" });
  who.value = localStorage.getItem("medsam2.annotator") || "";
  who.addEventListener("change", () => localStorage.setItem("medsam2.annotator", who.value.trim()));
  const next = element("button", { type: "button", id: "annotate-next" }, "Next case");
  const caseLine = element("p", { id: "annotate-case" }, "No case taken.");
  const canvas = element("canvas", { id: "annotate-view", width: "256", height: "256", title: "Drag a box to correct this slice" });
  const slider = element("input", { id: "annotate-slice", type: "range", min: "0", max: "0", value: "0", "aria-label": "Slice" });
  const buttons = element("div", { class: "row" });
  const actions = ["Undo", "Accept", "Reject", "Release"].map((name) => {
    const button = element("button", { type: "button", "data-action": name.toLowerCase() }, name);
    buttons.append(button);
    return button;
  });
  const report = element("a", { href: `${API}/report.png`, target: "_blank", rel: "noopener" }, "Effort report");
  const message = element("p", { id: "annotate-message", role: "status" });
  // Sized through the CSSOM: the page's Content-Security-Policy refuses style attributes.
  canvas.style.width = "100%";
  canvas.style.height = "auto";
  slider.style.width = "100%";
  buttons.style.flexWrap = "wrap";
  section.append(counts, who, next, caseLine, canvas, slider, buttons, report, message);
  return { section, counts, who, next, caseLine, canvas, slider, actions, message };
}

function showCounts(ui, status) {
  ui.counts.textContent = Object.entries(status.counts)
    .map(([state, count]) => `${state.replace("_", " ")} ${count}`)
    .join(" · ");
}

async function projectStatus() {
  return (await call("/status")).project;
}

async function start() {
  const status = await projectStatus();
  if (status === null) return; // no annotation project on this server
  const ui = buildPanel(status);
  (document.getElementById("panel") || document.body).prepend(ui.section);
  showCounts(ui, status);
  const current = { case: null, image: new Image(), drag: null };

  const annotator = () => {
    const name = ui.who.value.trim();
    if (!name) throw new Error("enter your name first");
    return name;
  };
  const say = (text, isError = false) => {
    ui.message.textContent = text;
    ui.message.classList.toggle("error", isError);
  };
  const refreshCounts = async () => showCounts(ui, await projectStatus());
  // A case is the annotator's to work on while in review under their lease.
  const mine = (caseInfo) => caseInfo.state === "in_review" && caseInfo.lease_owner === ui.who.value.trim();
  // After a refusal (the lease gone to someone else, the case finished elsewhere), show the case as it is.
  const refreshCase = async () => {
    if (!current.case) return;
    const { case: latest } = await call(`/cases/${encodeURIComponent(current.case.name)}`);
    if (!mine(latest)) show(latest);
  };
  const act = (action) => async () => {
    try {
      await action();
    } catch (error) {
      say(error.message, true);
      draw(); // a box drawn for a refused prompt goes
      if (error.status === 409) refreshCase().catch(() => {});
      refreshCounts().catch(() => {}); // the error may come of a change made elsewhere
    }
  };

  function draw() {
    if (current.image.complete && current.image.naturalWidth) {
      // The canvas takes the picture's proportions (square millimetres, as the server draws it).
      const height = Math.round((ui.canvas.width * current.image.naturalHeight) / current.image.naturalWidth);
      if (ui.canvas.height !== height) ui.canvas.height = height;
    }
    const context = ui.canvas.getContext("2d");
    context.clearRect(0, 0, ui.canvas.width, ui.canvas.height);
    if (current.image.complete && current.image.naturalWidth) {
      context.drawImage(current.image, 0, 0, ui.canvas.width, ui.canvas.height);
    }
    if (current.drag) {
      const { x0, y0, x1, y1 } = current.drag;
      context.strokeStyle = "#ff2828";
      context.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    }
  }

  function show(caseInfo) {
    current.case = mine(caseInfo) ? caseInfo : null;
    const until = caseInfo.lease_expires ? new Date(caseInfo.lease_expires).toLocaleTimeString() : "";
    const lease = !until ? "" : current.case ? `, yours until ${until}` : `, leased to ${caseInfo.lease_owner} until ${until}`;
    ui.caseLine.textContent = `${caseInfo.name}: ${caseInfo.state.replace("_", " ")}${lease}`;
    if (!current.case) {
      current.image = new Image(); // nothing of a case that is not the annotator's stays on show
      draw();
      return;
    }
    ui.slider.max = String(caseInfo.slices - 1);
    ui.slider.dir = caseInfo.slice_step < 0 ? "rtl" : "ltr"; // left to right in reading order, as the viewer's
    if (caseInfo.masked_slices.length && !caseInfo.masked_slices.includes(Number(ui.slider.value))) {
      ui.slider.value = String(caseInfo.masked_slices[Math.floor(caseInfo.masked_slices.length / 2)]);
    }
    showSlice();
  }

  // Fetched rather than set as an <img> source, so that a refusal reads as the server's message.
  async function loadSlice() {
    if (!current.case) return;
    const [name, slice] = [current.case.name, ui.slider.value];
    const query = `annotator=${encodeURIComponent(annotator())}&t=${Date.now()}`;
    setPending(+1); // until the image is decoded: tests wait for quiet before reading the canvas
    try {
      const response = await call(`/cases/${encodeURIComponent(name)}/slices/${slice}.png?${query}`);
      const image = new Image();
      image.src = URL.createObjectURL(await response.blob());
      try {
        await image.decode();
      } catch {
        throw new Error(`slice ${slice} could not be shown: the server sent no readable image`);
      } finally {
        URL.revokeObjectURL(image.src);
      }
      if (current.case && current.case.name === name && ui.slider.value === slice) {
        current.image = image; // a slower answer for a slice left behind is dropped
        draw();
      }
    } finally {
      setPending(-1);
    }
  }
  const showSlice = act(loadSlice);

  async function post(suffix, json) {
    const caseInfo = await call(`/cases/${encodeURIComponent(current.case.name)}/${suffix}`, { method: "POST", json });
    show(caseInfo);
    await refreshCounts();
    return caseInfo;
  }

  const takeNext = act(async () => {
    say("taking the next case…");
    const caseInfo = await call("/queue", { method: "POST", json: { annotator: annotator() } });
    await refreshCounts();
    if (!caseInfo) return say("no case is free");
    show(caseInfo);
    const passedOver = caseInfo.passed_over.map((line) => ` Passed over ${line}.`).join("");
    // The server words it (as `annotate queue` does), so the panel and the command say the same.
    const leftBy = caseInfo.left_by ? ` ${caseInfo.left_by.said[0].toUpperCase()}${caseInfo.left_by.said.slice(1)}.` : "";
    say(`${caseInfo.interactions} interaction(s) recorded so far; drag a box to correct a slice.${leftBy}${passedOver}`, passedOver !== "");
  });
  ui.next.addEventListener("click", takeNext);
  ui.slider.addEventListener("input", showSlice);

  const toCanvas = (event) => {
    const rect = ui.canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (ui.canvas.width / rect.width), (event.clientY - rect.top) * (ui.canvas.height / rect.height)];
  };
  ui.canvas.addEventListener("pointerdown", (event) => {
    if (!current.case) return;
    const [x, y] = toCanvas(event);
    current.drag = { x0: x, y0: y, x1: x, y1: y };
  });
  ui.canvas.addEventListener("pointermove", (event) => {
    if (!current.drag) return;
    [current.drag.x1, current.drag.y1] = toCanvas(event);
    draw();
  });
  ui.canvas.addEventListener("pointerup", act(async () => {
    const drag = current.drag;
    current.drag = null;
    if (!drag) return draw();
    if (Math.abs(drag.x1 - drag.x0) < 3 || Math.abs(drag.y1 - drag.y0) < 3) {
      draw();
      return say("no box: drag from one corner of the object to the opposite one");
    }
    // The PNG is the slice turned for the screen (the case's `display`) and stretched to square
    // millimetres; prompts are in the slice's own pixels.
    const { display, slice_shape: [rows, columns] } = current.case;
    const shown = shownSize(display, rows, columns);
    // The slice pixel under a canvas point, as the viewer boxes: whole pixels, within the slice.
    const clamp = (value, size) => Math.min(Math.max(Math.floor(value), 0), size - 1);
    const toSlice = (x, y) => {
      const [sx, sy] = shownToSlice(display, rows, columns, (x * shown.columns) / ui.canvas.width, (y * shown.rows) / ui.canvas.height);
      return [clamp(sx, columns), clamp(sy, rows)];
    };
    const [ax, ay] = toSlice(drag.x0, drag.y0);
    const [bx, by] = toSlice(drag.x1, drag.y1);
    const box = [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];
    say("segmenting…");
    const caseInfo = await post("prompts", { annotator: annotator(), slice: Number(ui.slider.value), box });
    say(`prompt recorded (${caseInfo.interactions} in force)`);
  }));

  const [undo, accept, reject, release] = ui.actions;
  undo.addEventListener("click", act(async () => {
    if (!current.case) return;
    await post("undo", { annotator: annotator() });
    say("undone");
  }));
  accept.addEventListener("click", act(async () => {
    if (!current.case) return;
    await post("accept", { annotator: annotator() });
    say("accepted: the mask is stored with its checksum");
  }));
  reject.addEventListener("click", act(async () => {
    if (!current.case) return;
    const reason = prompt("Why reject this case?");
    if (reason === null) return say("not rejected"); // Cancel
    await post("reject", { annotator: annotator(), reason });
    say("rejected");
  }));
  release.addEventListener("click", act(async () => {
    if (!current.case) return;
    await post("release", { annotator: annotator() });
    say("released for the next annotator");
  }));

  // A page reloaded mid-work opens the case its annotator holds (the queue gives a holder their case).
  if (status.leases.some((lease) => lease.annotator === ui.who.value.trim())) await takeNext();
}

start();
