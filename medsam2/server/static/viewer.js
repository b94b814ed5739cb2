// The medsam2 web viewer: a canvas slice viewer over the server's REST API (/api).
// Plain JavaScript, no framework and no build step; the server is the source of truth for prompts
// and masks, the page keeps only what it draws (slice images, decoded masks, the view).

import { api, setPending } from "/static/api.js";
import { shownSize as shownSizeOf, shownToSlice, sliceToShown } from "/static/display.js";

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const context = canvas.getContext("2d");

const WHEEL_STEP = 50; // wheel delta per slice: one notch of a mouse wheel, several trackpad events
const PAGE_STEP = 10;
const CLICK_SLOP = 4; // CSS pixels a click may move and still be a click
const IMAGE_CACHE = 400;
const MAX_NAME_LENGTH = 100; // the server's limit on an object's name
// Controls that act on the open session (Undo and Save are also enabled by what it allows).
const SESSION_CONTROLS = ["propagate", "erase", "download", "play", "window-preset", "window-width", "window-level", "mask-upload"];
// Slices and frames are numbered from 0 everywhere, as `medsam2 segment --box Z,...` and the API count them.

const state = {
  server: null, // GET /api/info
  session: null, // the open session as the server last described it
  slice: 0,
  objects: [], // {id, name}: the server's objects plus ones added here and not prompted yet
  activeObject: 1,
  tool: "box",
  window: null, // null: the slice as the model sees it; else {width, level} in the scan's units
  view: { zoom: 1, panX: 0, panY: 0 },
  viewSize: null, // {width, height} of the view in CSS pixels when last laid out
  pointer: null, // [x, y] slice pixel under the pointer, for the corner readout
  opacity: 0.45,
  showOverlay: true,
  masks: new Map(), // slice -> Map(object id -> Uint8Array of H*W, row-major)
  overlays: new Map(), // slice -> canvas with the masks drawn, rebuilt when they change
  images: new Map(), // `${slice}|${window}` -> decoded HTMLImageElement
  shownImage: null, // the image on screen, kept until the next one has loaded
  gesture: null,
  wheel: 0,
  player: null,
  cases: [], // GET /api/cases
};

// -- talking to the server ---------------------------------------------------------------------------

function sessionPath(suffix = "") {
  return `/api/sessions/${state.session.id}${suffix}`;
}

// A change to the session, made on the state this page shows (its `revision`, sent as If-Match):
// when the session changed meanwhile (in another tab), the server refuses it (412) and the page takes
// up the session as it now is, rather than merge into or undo work it never showed.
async function change(suffix, options = {}, session = state.session) {
  try {
    return await api(`/api/sessions/${session.id}${suffix}`, { ...options, headers: { ...options.headers, "If-Match": `"${session.revision}"` } });
  } catch (error) {
    if (error.status !== 412 || state.session?.id !== session.id) throw error;
    applySession(await api(sessionPath()));
    await refreshMasks();
    draw();
    throw new Error("Not done: this session was changed in another tab meanwhile. It now shows the session as it is: repeat the action if it is still wanted.");
  }
}

function status(message, isError = false) {
  const line = $("status");
  line.textContent = message;
  line.title = message; // the whole of a message longer than the line's two rows
  line.classList.toggle("error", isError);
}

// Run an action started by the user; a failure becomes the status line, never an uncaught error.
function act(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      reportError(error);
    }
  };
}

function reportError(error) {
  const gone = error.status === 404 ? goneSessionMessage(error.message) : null;
  status(gone ? `${gone} Open the case again.` : error.message, true);
}

// What to tell the user when the server no longer has the session a request named; null for any
// other 404. The server says why it closed one (idle, its session limit, another case opened in a
// page showing it); one it does not know it lost in a restart.
function goneSessionMessage(message) {
  const closed = /^session .* was closed: (.*)$/.exec(message);
  if (closed) return `This session is closed: ${closed[1]}.`;
  if (/^no session /.test(message)) return "This session is no longer on the server (it was restarted).";
  return null;
}

// -- geometry ----------------------------------------------------------------------------------------

function sliceSize() {
  const [, rows, columns] = state.session.shape;
  return { rows, columns };
}

// The slice is shown turned as the session's `display` says (display.js); every drawing and every
// pointer position goes through `imageToCanvas` and `canvasToImage`.
function shownSize() {
  const { rows, columns } = sliceSize();
  return shownSizeOf(state.session.display, rows, columns);
}

// Screen height of a shown row over screen width of a shown column, from the pixel spacing (square
// pixels where the file gives none).
function rowAspect() {
  const [columnStep, rowStep] = state.session.pixel_spacing || [1, 1];
  const [across, down] = state.session.display.transpose ? [rowStep, columnStep] : [columnStep, rowStep];
  return across > 0 && down > 0 ? down / across : 1;
}

function imageToCanvas(x, y) {
  const { zoom, panX, panY } = state.view;
  const { rows, columns } = sliceSize();
  const [u, v] = sliceToShown(state.session.display, rows, columns, x, y);
  return [panX + u * zoom, panY + v * zoom * rowAspect()];
}

function canvasToImage(cx, cy) {
  const { zoom, panX, panY } = state.view;
  const { rows, columns } = sliceSize();
  return shownToSlice(state.session.display, rows, columns, (cx - panX) / zoom, (cy - panY) / (zoom * rowAspect()));
}

function eventToImage(event) {
  const rect = canvas.getBoundingClientRect();
  return canvasToImage(event.clientX - rect.left, event.clientY - rect.top);
}

function insideSlice(x, y) {
  const { rows, columns } = sliceSize();
  return x >= 0 && y >= 0 && x < columns && y < rows;
}

function pixelOf(x, y) {
  const { rows, columns } = sliceSize();
  return [Math.min(Math.max(Math.floor(x), 0), columns - 1), Math.min(Math.max(Math.floor(y), 0), rows - 1)];
}

function fitView() {
  if (!state.session) return;
  const { rows, columns } = shownSize();
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const zoom = Math.min(width / columns, height / (rows * rowAspect())) * 0.96;
  state.view = { zoom, panX: (width - columns * zoom) / 2, panY: (height - rows * zoom * rowAspect()) / 2 };
}

function zoomAt(factor, cx, cy) {
  const { zoom, panX, panY } = state.view;
  const next = Math.min(Math.max(zoom * factor, 0.05), 64);
  state.view = { zoom: next, panX: cx - ((cx - panX) * next) / zoom, panY: cy - ((cy - panY) * next) / zoom };
  draw();
}

function resizeCanvas() {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
  const before = state.viewSize;
  state.viewSize = { width: canvas.clientWidth, height: canvas.clientHeight };
  if (state.session && before && before.width > 0 && before.height > 0) {
    // Keep the user's zoom and pan (a refit lost them on every resize): what was at the view's
    // centre stays there, as large against the view as it was.
    const scale = Math.min(state.viewSize.width / before.width, state.viewSize.height / before.height);
    const { zoom, panX, panY } = state.view;
    state.view = {
      zoom: zoom * scale,
      panX: state.viewSize.width / 2 - (before.width / 2 - panX) * scale,
      panY: state.viewSize.height / 2 - (before.height / 2 - panY) * scale,
    };
  } else fitView();
  draw();
}

// -- masks -------------------------------------------------------------------------------------------

// COCO RLE (column-major runs, background first) to a row-major 0/1 array.
function decodeRle(rle) {
  const [rows, columns] = rle.size;
  const mask = new Uint8Array(rows * columns);
  let position = 0;
  rle.counts.forEach((count, index) => {
    if (index % 2 === 1) {
      for (let p = position; p < position + count; p += 1) {
        mask[(p % rows) * columns + Math.floor(p / rows)] = 1;
      }
    }
    position += count;
  });
  return mask;
}

function colourOf(objectId) {
  const colours = state.server.label_colours;
  return colours[(objectId - 1) % colours.length];
}

function setSliceMasks(slice, objects) {
  const masks = new Map();
  for (const [objectId, rle] of Object.entries(objects)) masks.set(Number(objectId), decodeRle(rle));
  if (masks.size) state.masks.set(slice, masks);
  else state.masks.delete(slice);
  state.overlays.delete(slice);
}

async function refreshMasks() {
  const volume = await api(sessionPath("/masks"));
  state.masks.clear();
  state.overlays.clear();
  for (const entry of volume.slices) setSliceMasks(entry.slice, entry.objects);
}

// The masks of one slice as an image: filled with the overlay opacity, outlined opaque.
function overlayFor(slice) {
  if (state.overlays.has(slice)) return state.overlays.get(slice);
  const masks = state.masks.get(slice);
  if (!masks) return null;
  const { rows, columns } = sliceSize();
  const layer = document.createElement("canvas");
  layer.width = columns;
  layer.height = rows;
  const layerContext = layer.getContext("2d");
  const pixels = layerContext.createImageData(columns, rows);
  const fill = Math.round(state.opacity * 255);
  for (const objectId of [...masks.keys()].sort((a, b) => a - b)) {
    const mask = masks.get(objectId);
    const [r, g, b] = colourOf(objectId);
    for (let row = 0; row < rows; row += 1) {
      for (let column = 0; column < columns; column += 1) {
        const index = row * columns + column;
        if (!mask[index]) continue;
        const edge =
          row === 0 || column === 0 || row === rows - 1 || column === columns - 1 ||
          !mask[index - 1] || !mask[index + 1] || !mask[index - columns] || !mask[index + columns];
        pixels.data.set([r, g, b, edge ? 255 : fill], index * 4);
      }
    }
  }
  layerContext.putImageData(pixels, 0, 0);
  state.overlays.set(slice, layer);
  return layer;
}

// -- slice images ------------------------------------------------------------------------------------

function windowParameter() {
  return state.window ? `${Math.round(state.window.width)},${Math.round(state.window.level)}` : "";
}

function loadImage(slice) {
  const key = `${slice}|${windowParameter()}`;
  if (state.images.has(key)) return state.images.get(key);
  const image = new Image();
  const query = windowParameter() ? `?window=${encodeURIComponent(windowParameter())}` : "";
  image.src = sessionPath(`/slices/${slice}${query}`);
  setPending(+1);
  const loaded = image.decode().then(
    () => image,
    () => null,
  );
  loaded.then((image) => {
    // A failure is not kept: the slice is asked for again when next shown.
    if (!image && state.images.get(key) === loaded) state.images.delete(key);
  }).finally(() => setPending(-1));
  state.images.set(key, loaded);
  if (state.images.size > IMAGE_CACHE) state.images.delete(state.images.keys().next().value);
  return loaded;
}

async function showSlice(slice) {
  const sessionId = state.session.id;
  const image = await loadImage(slice);
  if (!state.session || state.session.id !== sessionId || slice !== state.slice) return;
  // A slice that did not load leaves the view blank: the previous slice stayed there, under this
  // slice's number, and nothing said why (a closed session, a stopped server).
  state.shownImage = image;
  draw();
  if (!image) await whySliceMissing(slice);
}

// An <img> does not say why it failed; the session's own address does.
async function whySliceMissing(slice) {
  try {
    await api(sessionPath());
    status(`${state.session.kind === "video" ? "Frame" : "Slice"} ${slice} could not be loaded.`, true);
  } catch (error) {
    reportError(error);
  }
}

function goTo(slice) {
  if (!state.session) return;
  const count = state.session.shape[0];
  state.slice = Math.min(Math.max(Math.round(slice), 0), count - 1);
  $("slice").value = String(state.slice);
  $("slice-number").textContent = `${state.slice} of 0–${count - 1}`;
  canvas.dataset.slice = String(state.slice);
  showSlice(state.slice);
  for (const near of [state.slice + 1, state.slice - 1, state.slice + 2]) {
    if (near >= 0 && near < count) loadImage(near);
  }
  draw();
}

// -- drawing -----------------------------------------------------------------------------------------

function draw() {
  const ratio = window.devicePixelRatio || 1;
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  if (!state.session) return;
  const { rows, columns } = sliceSize();
  // Slice pixels to canvas: the affine map whose columns are where one step along a slice row and
  // one step down a slice column land, so images are drawn through the same turn as everything else.
  const [originX, originY] = imageToCanvas(0, 0);
  const [acrossX, acrossY] = imageToCanvas(1, 0);
  const [downX, downY] = imageToCanvas(0, 1);
  context.save();
  context.transform(acrossX - originX, acrossY - originY, downX - originX, downY - originY, originX, originY);
  context.imageSmoothingEnabled = state.view.zoom < 2;
  if (state.shownImage) context.drawImage(state.shownImage, 0, 0, columns, rows);
  const overlay = state.showOverlay ? overlayFor(state.slice) : null;
  if (overlay) {
    context.imageSmoothingEnabled = false;
    context.drawImage(overlay, 0, 0, columns, rows);
  }
  context.restore();
  drawPrompts();
  drawGesture();
  drawCornerInfo();
}

function drawBox(x1, y1, x2, y2, colour, dashed = false) {
  const [ax, ay] = imageToCanvas(x1, y1);
  const [bx, by] = imageToCanvas(x2 + 1, y2 + 1);
  context.setLineDash(dashed ? [6, 4] : []);
  context.lineWidth = 2;
  context.strokeStyle = colour;
  context.strokeRect(Math.min(ax, bx), Math.min(ay, by), Math.abs(bx - ax), Math.abs(by - ay));
  context.setLineDash([]);
}

function drawPoint(x, y, positive, colour) {
  const [cx, cy] = imageToCanvas(x + 0.5, y + 0.5);
  context.beginPath();
  context.arc(cx, cy, 6, 0, 2 * Math.PI);
  context.fillStyle = positive ? colour : "#000";
  context.fill();
  context.lineWidth = 2;
  context.strokeStyle = positive ? "#fff" : colour;
  context.stroke();
  context.fillStyle = positive ? "#000" : "#fff";
  context.font = "bold 11px sans-serif";
  context.textAlign = "center";
  context.textBaseline = "middle";
  context.fillText(positive ? "+" : "−", cx, cy + 0.5);
}

function drawPrompts() {
  for (const object of state.session.objects) {
    const colour = `rgb(${colourOf(object.id).join(",")})`;
    for (const prompt of object.prompts) {
      if (prompt.slice !== state.slice) continue;
      if (prompt.box) drawBox(...prompt.box, colour);
      prompt.points.forEach(([x, y], index) => drawPoint(x, y, prompt.labels[index] === 1, colour));
    }
  }
}

function drawGesture() {
  const gesture = state.gesture;
  if (!gesture || gesture.mode !== "box") return;
  const [x1, y1] = pixelOf(Math.min(gesture.startImage[0], gesture.image[0]), Math.min(gesture.startImage[1], gesture.image[1]));
  const [x2, y2] = pixelOf(Math.max(gesture.startImage[0], gesture.image[0]), Math.max(gesture.startImage[1], gesture.image[1]));
  drawBox(x1, y1, x2, y2, `rgb(${colourOf(state.activeObject).join(",")})`, true);
}

// The slice pixel under the pointer, in the coordinates prompts take (`--box Z,X1,Y1,...`), or
// null off the slice: slices are shown turned, so a picture's corner is not always pixel (0, 0).
function pointedPixel(event) {
  if (!state.session) return null;
  const [x, y] = eventToImage(event).map(Math.floor);
  const { rows, columns } = sliceSize();
  return x >= 0 && y >= 0 && x < columns && y < rows ? [x, y] : null;
}

function drawCornerInfo() {
  if (!state.session) return;
  const count = state.session.shape[0];
  const what = state.session.kind === "video" ? "Frame" : "Slice";
  const shownWindow = state.window || modelWindow();
  const pointer = state.pointer ? `   X ${state.pointer[0]} Y ${state.pointer[1]}` : "";
  $("corner-info").textContent =
    `${what} ${state.slice} of 0–${count - 1}   W ${Math.round(shownWindow.width)} L ${Math.round(shownWindow.level)}` +
    `   zoom ${state.view.zoom.toFixed(2)}${pointer}`;
}

// -- window / level ----------------------------------------------------------------------------------

function modelWindow() {
  const { low, high } = state.session.intensity;
  return { width: Math.max(high - low, 1), level: (high + low) / 2 };
}

function setWindow(chosen, presetName = chosen ? "custom" : "") {
  state.window = chosen;
  const shown = chosen || modelWindow();
  $("window-width").value = String(Math.round(shown.width));
  $("window-level").value = String(Math.round(shown.level));
  $("window-preset").value = presetName;
  showSlice(state.slice);
  draw();
}

function fillWindowPresets() {
  const select = $("window-preset");
  select.replaceChildren(new Option("As the model sees it", ""));
  Object.entries(state.session.window_presets).forEach(([name, preset], index) => {
    select.append(new Option(`${index + 1}: ${name.replace("_", " ")} (W${preset.width} L${preset.level})`, name));
  });
  select.append(new Option("Custom", "custom"));
}

function choosePreset(name) {
  const preset = state.session.window_presets[name];
  if (name === "") setWindow(null, "");
  else if (preset) setWindow({ width: preset.width, level: preset.level }, name);
}

// -- objects and prompts -----------------------------------------------------------------------------

function activeObject() {
  return state.objects.find((object) => object.id === state.activeObject);
}

function applySession(info) {
  state.session = info;
  for (const object of info.objects) {
    const known = state.objects.find((entry) => entry.id === object.id);
    if (!known) state.objects.push({ id: object.id, name: object.name || `Object ${object.id}` });
    else if (object.name) known.name = object.name;
  }
  state.objects.sort((a, b) => a.id - b.id);
  renderObjects();
  renderPrompted();
  $("undo").disabled = info.undo_steps === 0;
  $("propagate").classList.toggle("attention", info.objects.some((object) => object.needs_propagation));
  fillSavedMasks(info.saved_masks);
  $("save").disabled = !info.case.can_save;
  $("save").title = info.case.can_save
    ? "Write the label map next to the case on the server (asks before replacing one saved earlier)"
    : "Masks of uploads and samples are not kept on the server: Download the mask instead";
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren();
  for (const object of state.objects) {
    const item = document.createElement("li");
    item.classList.toggle("active", object.id === state.activeObject);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colourOf(object.id).join(",")})`;
    const name = document.createElement("input");
    name.value = object.name;
    name.maxLength = MAX_NAME_LENGTH;
    name.setAttribute("aria-label", `Name of object ${object.id}`);
    name.addEventListener("change", act(() => renameObject(object, name.value.trim())));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Delete this object and its masks";
    remove.addEventListener("click", act(() => deleteObject(object)));
    item.append(swatch, name, remove);
    item.addEventListener("click", (event) => {
      if (event.target === remove) return;
      state.activeObject = object.id;
      // Marked in place, not rebuilt: a rebuilt list drops the focus of the name field just clicked
      // into, and the name typed then went to the shortcuts (its E erased the object from the slice).
      for (const entry of list.children) entry.classList.toggle("active", entry === item);
    });
    list.append(item);
  }
}

function renderPrompted() {
  const list = $("prompted");
  list.replaceChildren();
  const entries = state.session.objects.flatMap((object) =>
    object.prompts.map((prompt) => ({ object, prompt })),
  );
  entries.sort((a, b) => a.prompt.slice - b.prompt.slice || a.object.id - b.object.id);
  for (const { object, prompt } of entries) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const kinds = [prompt.box && "box", prompt.points.length && `${prompt.points.length} point${prompt.points.length === 1 ? "" : "s"}`, prompt.mask && (prompt.erased ? "erased" : "mask")];
    const name = state.objects.find((entry) => entry.id === object.id)?.name || `Object ${object.id}`;
    button.textContent = `${prompt.slice}: ${name} (${kinds.filter(Boolean).join(", ")})`;
    button.style.borderLeftColor = `rgb(${colourOf(object.id).join(",")})`;
    button.addEventListener("click", () => {
      state.activeObject = object.id;
      renderObjects();
      goTo(prompt.slice);
    });
    item.append(button);
    list.append(item);
  }
}

function promptedSlices() {
  return [...new Set(state.session.objects.flatMap((object) => object.prompts.map((prompt) => prompt.slice)))].sort((a, b) => a - b);
}

// Steps go through the patient in reading order (axial head to feet, coronal front to back, sagittal
// right to left) whatever order the file stores the slices in: `slice_step` is -1 where it runs the
// other way. Slice numbers stay the file's, as prompts use them.
function stepSlices(count) {
  const last = state.session.shape[0] - 1;
  const target = state.slice + count * state.session.slice_step;
  goTo(Number.isFinite(target) ? target : target > 0 ? last : 0);
}

function jumpPrompted(direction) {
  const onward = direction * state.session.slice_step;
  const slices = promptedSlices();
  const target = onward > 0 ? slices.find((s) => s > state.slice) : slices.reverse().find((s) => s < state.slice);
  if (target !== undefined) goTo(target);
}

function addObject() {
  const id = Math.max(0, ...state.objects.map((object) => object.id)) + 1;
  state.objects.push({ id, name: `Object ${id}` });
  state.activeObject = id;
  renderObjects();
}

function onServer(object) {
  return state.session.objects.some((entry) => entry.id === object.id);
}

async function renameObject(object, name) {
  if (!name) return renderObjects(); // an emptied name field shows the name kept
  object.name = name;
  if (onServer(object)) applySession(await change(`/objects/${object.id}`, { method: "PATCH", json: { name } }));
  renderPrompted();
}

async function deleteObject(object) {
  if (onServer(object)) {
    const slices = state.session.objects.find((entry) => entry.id === object.id).slices.length;
    const what = slices ? ` and its masks on ${slices} ${caseWords().part}${slices === 1 ? "" : "s"}` : "";
    if (!confirm(`Delete ${object.name}${what}? This cannot be undone.`)) return;
    applySession(await change(`/objects/${object.id}`, { method: "DELETE" }));
    await refreshMasks();
  }
  state.objects = state.objects.filter((entry) => entry.id !== object.id);
  if (!state.objects.length) addObject();
  if (state.activeObject === object.id) state.activeObject = state.objects[0].id;
  renderObjects();
  // Said: the status line went on showing the action before (say "Took back the latest prompt.").
  status(`Deleted ${object.name}.`);
  draw();
}

// What the case is made of, and what of it one is, in the words of its kind.
function caseWords() {
  return state.session?.kind === "video" ? { part: "frame", whole: "clip" } : { part: "slice", whole: "scan" };
}

// While a propagation runs (Propagate is disabled then, also after a reload during one), a change to
// the session was refused by the server as made "in another tab", which the user never opened.
function refusedWhilePropagating(what) {
  if (!$("propagate").disabled) return false;
  status(`Propagating: ${what} when it is done.`, true);
  return true;
}

async function sendPrompt(fields, done = `segmented on ${caseWords().part} ${state.slice}. Press Propagate (G) to follow it through the ${caseWords().whole}.`) {
  if (refusedWhilePropagating("prompt again")) return;
  const object = activeObject();
  const slice = state.slice;
  status(`Segmenting ${object.name} on ${caseWords().part} ${slice}…`);
  const result = await change("/prompts", {
    method: "POST",
    json: { slice, obj_id: object.id, name: object.name, ...fields },
  });
  const current = state.masks.get(slice) || new Map();
  current.set(object.id, decodeRle(result.mask));
  state.masks.set(slice, current);
  state.overlays.delete(slice);
  applySession(result.session);
  showProgress({ state: "idle", done: 0, total: 0 });
  status(`${object.name} ${done}`);
  draw();
}

// An empty mask prompt: the active object is not on this slice (a leak corrected, or an end marked).
async function eraseHere() {
  if (!state.session) return;
  const object = activeObject();
  if (!onServer(object)) {
    status(`${object.name} has no mask yet: nothing to erase.`, true);
    return;
  }
  const [rows, columns] = state.session.shape.slice(1);
  const empty = { size: [rows, columns], counts: [rows * columns] };
  const { part } = caseWords();
  await sendPrompt({ mask: empty }, `taken off ${part} ${state.slice}. Press Propagate (G) so the ${part}s around follow.`);
}

async function propagate() {
  if (!state.session || $("propagate").disabled) return;
  if (!state.session.objects.length) {
    status("Nothing to propagate yet: draw a box (or click) on the object first.", true);
    return;
  }
  const session = state.session;
  const current = () => state.session && state.session.id === session.id; // another case may be opened meanwhile
  status("Propagating…");
  $("propagate").disabled = true;
  const poll = setInterval(async () => {
    try {
      if (current()) showProgress((await api(sessionPath())).progress);
    } catch {
      // a missed poll only delays the progress bar
    }
  }, 300);
  try {
    const info = await change("/propagate", { method: "POST", json: { direction: propagationDirection() } }, session);
    if (!current()) return;
    await refreshMasks();
    applySession(info);
    showProgress(info.progress);
    status(`Propagated. ${objectExtents(info)}`);
  } catch (error) {
    if (current()) throw error; // the case left behind was closed: not this case's error
  } finally {
    clearInterval(poll);
    $("propagate").disabled = false;
  }
  draw();
}

// The chosen way in reading order (the arrow keys'), as the engine's way in slice numbers.
function propagationDirection() {
  const choice = $("propagate-direction").value;
  if (choice === "both") return "both";
  const onward = (choice === "onward" ? 1 : -1) * state.session.slice_step;
  return onward > 0 ? "forward" : "backward";
}

// "Object 1: 12 slices; Object 2: 1 slice", for a session's objects.
function objectExtents(info) {
  const slices = (count) => `${count} ${info.kind === "video" ? "frame" : "slice"}${count === 1 ? "" : "s"}`;
  return info.objects.map((object) => `${object.name || `Object ${object.id}`}: ${slices(object.slices.length)}`).join("; ");
}

function showProgress(progress) {
  const bar = $("progress");
  bar.max = Math.max(progress.total, 1);
  bar.value = progress.state === "done" ? bar.max : progress.done;
  const words = { idle: "", queued: "waiting for the model…", running: progress.total ? `${progress.done} / ${progress.total} ${caseWords().part}s` : "starting…", done: "done", failed: progress.message };
  $("progress-text").textContent = words[progress.state] ?? "";
}

async function undo() {
  if (!state.session) return;
  if (state.session.undo_steps === 0) {
    status("Nothing to undo."); // Ctrl+Z left the last action's message up, as if it had been taken back
    return;
  }
  if (refusedWhilePropagating("undo")) return;
  applySession(await change("/undo", { method: "POST" }));
  await refreshMasks();
  status("Took back the latest prompt.");
  draw();
}

// -- cases, sessions, export -------------------------------------------------------------------------

async function loadCases(selected) {
  const cases = await api("/api/cases");
  state.cases = cases;
  const select = $("case-select");
  select.replaceChildren();
  const groups = { data: "Data", upload: "Uploads", sample: "Samples" };
  for (const [source, label] of Object.entries(groups)) {
    const members = cases.filter((entry) => entry.source === source);
    if (!members.length) continue;
    const group = document.createElement("optgroup");
    group.label = label;
    for (const entry of members) group.append(new Option(entry.name, entry.id));
    select.append(group);
  }
  if (selected) select.value = selected;
  if (!cases.length) status("No cases: upload a scan, or start the server with --data FOLDER.", true);
}

async function openCase() {
  const caseId = $("case-select").value;
  if (!caseId) return;
  status("Opening…");
  const previous = state.session;
  const worked = previous ? previous.objects.filter((object) => object.prompts.length).length : 0;
  const name = $("case-select").selectedOptions[0].text;
  const objects = worked === 1 ? "1 object" : `${worked} objects`;
  if (worked && !confirm(`Open ${name}? The work on ${previous.case.name} (${objects}) closes: Download or Save its mask first to keep it.`)) {
    $("case-select").value = previous.case.id;
    status(`Still on ${previous.case.name}.`);
    return;
  }
  stopPlaying();
  const opening = { case: caseId, axis: $("axis").value };
  if (state.server.memory_banks.length) opening.memory = $("memory").value;
  const info = await api("/api/sessions", { method: "POST", json: opening });
  if (previous) api(`/api/sessions/${previous.id}`, { method: "DELETE" }).catch(() => {});
  showSession(info, startSlice(info));
  const unit = info.kind === "video" ? "frame" : "slice";
  const what = `${info.case.name}: ${info.shape[0]} ${unit}${info.shape[0] === 1 ? "" : "s"} of ${info.shape[2]}×${info.shape[1]} pixels (wide×high).`;
  const next = !opensAtKeySlice(info)
    ? "Draw a box around the object."
    : `Slice ${info.case.start_slice} shows the lesion at its largest: drag a box around it, then press Propagate.`;
  const saved = info.saved_masks.length ? ` Saved earlier beside this case: ${info.saved_masks.join(", ")}.` : "";
  // The server's warnings are clauses ("the server holds at most ..."): each a sentence here.
  const warned = info.warnings.map((line) => `${line[0].toUpperCase()}${line.slice(1)}.`).join(" ");
  if (info.warnings.length) status(`${what} ${warned}${saved}`, true);
  else status(`${what} ${next}${saved}`);
}

// The page's address names its session (#session=ID), so that a reload, even during a propagation,
// comes back to the work instead of opening a new session. False when the address names none; true
// when the page shows its session, or says it is gone.
async function resumeSession() {
  const id = new URLSearchParams(location.hash.slice(1)).get("session");
  if (!id) return false;
  let info;
  try {
    info = await api(`/api/sessions/${encodeURIComponent(id)}`);
  } catch (error) {
    // Closed, or the server restarted: the address stops naming it, and the page says the work is gone.
    history.replaceState(null, "", location.pathname);
    const gone = error.status === 404 ? goneSessionMessage(error.message) : null;
    status(gone ? `${gone} Choose a case and press Open.` : error.message, true);
    return true;
  }
  $("case-select").value = info.case.id;
  $("axis").value = info.axis;
  const prompted = info.objects.flatMap((object) => object.prompts.map((prompt) => prompt.slice));
  showSession(info, prompted.length ? prompted[0] : startSlice(info));
  const busy = (progress) => ["queued", "running"].includes(progress.state);
  if (!busy(info.progress)) {
    await refreshMasks();
    draw();
    status(`${info.case.name}: back to this session's work.`);
    return true;
  }
  // The masks are read once the propagation is done (reading them waits for it meanwhile).
  status(`${info.case.name}: propagating (started before the page was reloaded); the masks show when it is done…`);
  $("propagate").disabled = true;
  try {
    while (busy(info.progress)) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      if (state.session.id !== id) return true; // another case was opened meanwhile
      info = await api(sessionPath());
      showProgress(info.progress);
    }
  } finally {
    $("propagate").disabled = false;
  }
  applySession(info);
  await refreshMasks();
  draw();
  status(info.progress.state === "failed" ? info.progress.message : `Propagated. ${objectExtents(info)}`, info.progress.state === "failed");
  return true;
}

// Show an opened (or resumed) session, on `slice`.
function showSession(info, slice) {
  history.replaceState(null, "", `#session=${info.id}`);
  const count = info.shape[0];
  Object.assign(state, {
    session: info,
    slice: Math.min(Math.max(slice, 0), count - 1),
    objects: [{ id: 1, name: "Object 1" }],
    activeObject: 1,
    window: null,
    shownImage: null,
  });
  state.masks.clear();
  state.overlays.clear();
  state.images.clear();
  // Disabled until a case is open: before, each of them failed with "Cannot read properties of null".
  for (const id of SESSION_CONTROLS) $(id).disabled = false;
  applySession(info);
  showEdgeLetters(info);
  fillWindowPresets();
  setWindow(null, "");
  fillMaskFormats();
  $("slice").max = String(count - 1);
  $("slice").dir = info.slice_step < 0 ? "rtl" : "ltr"; // the slider runs in reading order too
  $("slice-label").textContent = info.kind === "video" ? "Frame" : "Slice";
  showProgress(info.progress);
  fitView();
  goTo(state.slice);
  canvas.focus();
}

// The patient's side at the left, right, top and bottom of the view, slices being shown as
// radiologists look at them (the session's `display`), for cases placed in the patient.
const EDGE_LETTERS = {
  axial: ["R", "L", "A", "P"],
  coronal: ["R", "L", "S", "I"],
  sagittal: ["A", "P", "S", "I"],
};

function showEdgeLetters(info) {
  const letters = info.patient_frame ? EDGE_LETTERS[info.axis] : ["", "", "", ""];
  ["left", "right", "top", "bottom"].forEach((edge, index) => {
    $(`edge-${edge}`).textContent = letters[index];
  });
}

// A case's key slice (where its lesion is largest) is an axial one; other views open in the middle.
function opensAtKeySlice(info) {
  return info.case.start_slice !== null && info.axis === "axial";
}

function startSlice(info) {
  if (opensAtKeySlice(info)) return info.case.start_slice;
  return info.kind === "video" ? 0 : Math.floor(info.shape[0] / 2);
}

// Memory models (SAM 2.1 / MedSAM2) offer a choice of memory bank; LiteMedSAM has no memory.
function fillMemoryBanks() {
  const banks = state.server.memory_banks;
  $("memory").replaceChildren(...banks.map((bank) => new Option(bank === "recent" ? "recent (SAM 2)" : bank, bank)));
  $("memory-choice").hidden = banks.length === 0;
}

async function uploadFile(file) {
  status(`Uploading ${file.name}…`);
  const entry = await api(`/api/cases?name=${encodeURIComponent(file.name)}`, {
    method: "POST",
    body: file,
    headers: { "Content-Type": "application/octet-stream" },
  });
  await loadCases(entry.id);
  status(`Uploaded ${entry.name}. Press Open.`);
}

// The file picker's filter for some formats ("nii.gz", "nrrd"...): browsers match a two-part
// suffix unevenly, so ".nii.gz" is offered as ".gz" (a wider filter never hides a file the server takes).
function pickerFilter(formats) {
  return [...new Set(formats.map((format) => `.${format.split(".").pop()}`))].join(",");
}

function fillMaskFormats() {
  $("mask-upload").accept = pickerFilter(state.session.mask_formats);
  const select = $("mask-format");
  const formats = state.session.mask_formats.filter((format) => format !== "png" || state.session.kind === "image");
  select.replaceChildren(...formats.map((format) => new Option(format, format)));
  select.value = formats.includes("nii.gz") ? "nii.gz" : formats[0];
}

async function download() {
  const format = $("mask-format").value;
  const response = await api(sessionPath(`/mask-file?format=${encodeURIComponent(format)}`));
  const disposition = response.headers.get("content-disposition") || "";
  const name = decodeURIComponent(disposition.split("''")[1] || `mask.${format}`);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  status(`Downloaded ${name}.`);
}

// Masks saved beside the case, offered for loading back (the latest choice stays selected).
function fillSavedMasks(names) {
  const select = $("saved-mask");
  const chosen = select.value;
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  if (names.includes(chosen)) select.value = chosen;
  select.hidden = names.length < 2;
  $("load-saved").hidden = names.length === 0;
}

// A label map (saved beside the case, or a file from this computer) becomes the session's objects,
// each slice of it prompted with its mask there: the masks stay as they are until a slice is corrected.
async function loadMask(name, send) {
  if ($("propagate").disabled) {
    status("Propagating: load the mask when it is done (it would replace what the propagation is making).", true);
    return;
  }
  const count = state.session.objects.length;
  if (count && !confirm(`Replace this session's ${count === 1 ? "object" : `${count} objects`} with ${name}?`)) return;
  status(`Loading ${name}…`);
  const info = await send();
  state.objects = info.objects.map((object) => ({ id: object.id, name: object.name || `Object ${object.id}` }));
  state.activeObject = state.objects[0].id;
  applySession(info);
  await refreshMasks();
  status(`Loaded ${name}. ${objectExtents(info)}. Click or box on a slice to correct it there; Undo goes back to the file's mask.`);
  showProgress({ state: "idle", done: 0, total: 0 });
  draw();
}

function loadSaved() {
  const file = $("saved-mask").value;
  return loadMask(file, () => change("/load", { method: "POST", json: { file } }));
}

function loadFile(file) {
  return loadMask(file.name, () =>
    change(`/mask-file?name=${encodeURIComponent(file.name)}`, {
      method: "PUT",
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    }),
  );
}

async function saveOnServer(replace = false) {
  let saved;
  try {
    saved = await api(sessionPath("/save"), { method: "POST", json: { format: $("mask-format").value, replace } });
  } catch (error) {
    // A mask saved earlier (perhaps another session's work) is replaced only when the user says so.
    if (error.status !== 409) throw error;
    if (confirm(`${error.message.split(";")[0]}. Replace it with this session's mask?`)) return saveOnServer(true);
    status("Not saved: the earlier mask is kept.");
    return;
  }
  applySession(await api(sessionPath())); // offers the saved mask for loading
  status(`Saved ${saved.file} next to the case.`);
}

// -- playing -----------------------------------------------------------------------------------------

function stopPlaying() {
  clearInterval(state.player);
  state.player = null;
  $("play").textContent = "▶";
}

function togglePlay() {
  if (!state.session) return;
  if (state.player) return stopPlaying();
  const fps = state.session.fps || 10;
  const count = state.session.shape[0];
  // In reading order, as the arrow keys and the slider go (`slice_step`), round and round.
  state.player = setInterval(() => goTo((state.slice + state.session.slice_step + count) % count), 1000 / fps);
  $("play").textContent = "⏸";
}

// -- mouse -------------------------------------------------------------------------------------------

function setTool(tool) {
  state.tool = tool;
  document.querySelectorAll("[data-tool]").forEach((button) => button.classList.toggle("active", button.dataset.tool === tool));
  canvas.dataset.tool = tool;
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());

canvas.addEventListener("pointerdown", (event) => {
  if (!state.session) return;
  canvas.focus();
  canvas.setPointerCapture(event.pointerId);
  const mode = event.button === 1 ? "pan" : event.button === 2 ? "window" : state.tool;
  // A prompt goes on the slice it was started on: playing on, the box landed on whichever slice
  // showed when the button was released.
  if (["box", "positive", "negative"].includes(mode)) stopPlaying();
  const image = eventToImage(event);
  state.gesture = {
    mode,
    startX: event.clientX,
    startY: event.clientY,
    startImage: image,
    image,
    view: { ...state.view },
    window: { ...(state.window || modelWindow()) },
    negative: event.shiftKey,
  };
});

canvas.addEventListener("pointermove", (event) => {
  state.pointer = pointedPixel(event);
  const gesture = state.gesture;
  if (!gesture) return drawCornerInfo();
  const dx = event.clientX - gesture.startX;
  const dy = event.clientY - gesture.startY;
  gesture.image = eventToImage(event);
  if (gesture.mode === "pan") {
    state.view = { ...gesture.view, panX: gesture.view.panX + dx, panY: gesture.view.panY + dy };
  } else if (gesture.mode === "window") {
    const [low, high] = state.session.intensity.value_range;
    const step = Math.max(high - low, 1) / 500;
    state.window = { width: Math.max(1, gesture.window.width + dx * step), level: gesture.window.level - dy * step };
    $("window-width").value = String(Math.round(state.window.width));
    $("window-level").value = String(Math.round(state.window.level));
    $("window-preset").value = "custom";
  }
  draw();
});

canvas.addEventListener("pointerleave", () => {
  state.pointer = null;
  drawCornerInfo();
});

canvas.addEventListener("pointerup", act(async (event) => {
  const gesture = state.gesture;
  state.gesture = null;
  if (!gesture) return;
  const moved = Math.hypot(event.clientX - gesture.startX, event.clientY - gesture.startY);
  if (gesture.mode === "window") {
    showSlice(state.slice);
  } else if (gesture.mode === "box") {
    const [x1, y1] = pixelOf(Math.min(gesture.startImage[0], gesture.image[0]), Math.min(gesture.startImage[1], gesture.image[1]));
    const [x2, y2] = pixelOf(Math.max(gesture.startImage[0], gesture.image[0]), Math.max(gesture.startImage[1], gesture.image[1]));
    draw();
    if (moved > CLICK_SLOP && x2 > x1 && y2 > y1) await sendPrompt({ box: [x1, y1, x2, y2] });
    else status("No box: drag from one corner of the object to the opposite one (for a click, choose + or − first).");
  } else if (gesture.mode === "positive" || gesture.mode === "negative") {
    const positive = gesture.mode === "positive" && !gesture.negative;
    if (moved > CLICK_SLOP) status("No click: the pointer moved while pressed. Click without dragging (to draw a box, press B).");
    else if (!insideSlice(...gesture.image)) status("No click: the pointer was outside the image.");
    else await sendPrompt({ points: [pixelOf(...gesture.image)], labels: [positive ? 1 : 0] });
  }
  draw();
}));

canvas.addEventListener("wheel", (event) => {
  if (!state.session) return;
  event.preventDefault();
  if (event.ctrlKey) {
    const rect = canvas.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - rect.left, event.clientY - rect.top);
    return;
  }
  state.wheel += event.deltaY;
  if (Math.abs(state.wheel) >= WHEEL_STEP) {
    stepSlices(Math.sign(state.wheel));
    state.wheel = 0;
  }
}, { passive: false });

// -- keyboard ----------------------------------------------------------------------------------------

document.addEventListener("keydown", act(async (event) => {
  // Typing goes to fields; the slider keeps only the keys it moves by (the shortcuts stay live after a drag).
  const slider = event.target.matches?.("input[type=range]");
  if (slider && ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End"].includes(event.key)) return;
  if (!slider && event.target.closest("input, select, textarea, dialog")) return;
  if (!state.session) return;
  const key = event.key;
  const presets = Object.keys(state.session.window_presets);
  const center = () => [canvas.clientWidth / 2, canvas.clientHeight / 2];
  const actions = {
    ArrowUp: () => stepSlices(-1),
    ArrowLeft: () => stepSlices(-1),
    ArrowDown: () => stepSlices(+1),
    ArrowRight: () => stepSlices(+1),
    PageUp: () => stepSlices(-PAGE_STEP),
    PageDown: () => stepSlices(+PAGE_STEP),
    Home: () => stepSlices(-Infinity),
    End: () => stepSlices(+Infinity),
    "[": () => jumpPrompted(-1),
    "]": () => jumpPrompted(+1),
    "+": () => zoomAt(1.25, ...center()),
    "=": () => zoomAt(1.25, ...center()),
    "-": () => zoomAt(1 / 1.25, ...center()),
    0: () => { fitView(); draw(); },
    b: () => setTool("box"),
    p: () => setTool("positive"),
    n: () => setTool("negative"),
    h: () => setTool("pan"),
    w: () => setTool("window"),
    g: propagate,
    e: eraseHere,
    o: () => { $("show-overlay").checked = !$("show-overlay").checked; state.showOverlay = $("show-overlay").checked; draw(); },
    " ": togglePlay,
    "?": () => $("help").showModal(),
  };
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") {
    event.preventDefault();
    await undo();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(key)) {
    if (presets[Number(key) - 1]) choosePreset(presets[Number(key) - 1]);
    else status(presets.length ? `Window presets are 1 to ${presets.length}.` : "Window presets are for CT; this image has none (W drags the window).");
    return;
  }
  const action = actions[key] || actions[key.toLowerCase()];
  if (!action) return;
  event.preventDefault();
  await action();
}));

// -- controls ----------------------------------------------------------------------------------------

document.querySelectorAll("[data-tool]").forEach((button) => button.addEventListener("click", () => setTool(button.dataset.tool)));
$("open-case").addEventListener("click", act(openCase));
$("upload").addEventListener("change", act(async (event) => {
  const [file] = event.target.files;
  event.target.value = "";
  if (file) await uploadFile(file);
}));
$("help-button").addEventListener("click", () => $("help").showModal());
// Upload… and Load file… are labels over hidden file inputs: Tab skips a hidden input, so without
// this the keyboard could reach neither. Focusable, Enter or Space opens the file chooser.
for (const id of ["upload", "mask-upload"]) {
  $(id).closest("label").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    event.stopPropagation(); // Space would play, as in the view
    $(id).click();
  });
}
$("slice").addEventListener("input", (event) => goTo(Number(event.target.value)));
$("play").addEventListener("click", togglePlay);
$("propagate").addEventListener("click", act(propagate));
$("undo").addEventListener("click", act(undo));
$("erase").addEventListener("click", act(eraseHere));
$("add-object").addEventListener("click", addObject);
$("download").addEventListener("click", act(download));
$("save").addEventListener("click", act(() => saveOnServer()));
$("load-saved").addEventListener("click", act(loadSaved));
$("mask-upload").addEventListener("change", act(async (event) => {
  const [file] = event.target.files;
  event.target.value = "";
  if (file && state.session) await loadFile(file);
}));
$("window-preset").addEventListener("change", (event) => {
  if (event.target.value !== "custom") choosePreset(event.target.value);
});
// A choice made, the keys are the view's again: G propagates the way just chosen, arrows step
// slices (in a focused list they would change the choice instead).
for (const id of ["propagate-direction", "window-preset"]) $(id).addEventListener("change", () => canvas.focus());
for (const id of ["window-width", "window-level"]) {
  $(id).addEventListener("change", () => {
    const width = Number($("window-width").value);
    const level = Number($("window-level").value);
    if (width > 0 && Number.isFinite(level)) {
      setWindow({ width, level });
      return status(`Window W${Math.round(width)} L${Math.round(level)}.`);
    }
    const shown = state.window || modelWindow();
    $("window-width").value = String(Math.round(shown.width));
    $("window-level").value = String(Math.round(shown.level));
    status("The window width must be a positive number of grey levels, the level a number.", true);
  });
}
$("opacity").addEventListener("input", (event) => {
  state.opacity = Number(event.target.value);
  state.overlays.clear();
  draw();
});
$("show-overlay").addEventListener("change", (event) => {
  state.showOverlay = event.target.checked;
  draw();
});
new ResizeObserver(resizeCanvas).observe($("viewport"));
// A page closed (or reloaded) tells the server, so that its session's place can go to another case
// when the server is full: it held it for the whole idle time. A reload's next request keeps it.
window.addEventListener("pagehide", () => {
  if (state.session) navigator.sendBeacon(sessionPath("/leave"));
});

// For tests and scripts: where a slice pixel's centre is on the page, in CSS pixels.
window.medsam2Viewer = {
  imageToClient(x, y) {
    const rect = canvas.getBoundingClientRect();
    const [cx, cy] = imageToCanvas(x + 0.5, y + 0.5);
    return [rect.left + cx, rect.top + cy];
  },
};

async function start() {
  // A token in the URL has become a cookie (see the server's security notes); keep it out of sight.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
  setTool("box");
  state.server = await api("/api/info");
  $("upload").accept = pickerFilter(state.server.upload_formats);
  fillMemoryBanks();
  await loadCases();
  if (await resumeSession()) return;
  // A case with a start slice (the built sample lesion) is opened at once, on the slice to box:
  // a first-time user sees something to segment without choosing anything.
  const first = state.cases.find((entry) => entry.start_slice !== null);
  if (first) {
    $("case-select").value = first.id;
    await openCase();
  }
}

act(start)();
