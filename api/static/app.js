// The page at GET /: send the chosen image to POST /detect once (every detection, score >= 0,
// masks as COCO RLE, keypoints), then draw it; the threshold slider and the mask / keypoint
// toggles only filter and redraw what came back. No framework, no build step, no network but ours.
"use strict";

// Kept in step with api/render.py, so the page and POST /detect/render draw alike.
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
];
const MASK_ALPHA = 110 / 255;
// COCO person skeleton as pairs of keypoint indices (0 nose ... 16 right ankle).
const COCO_SKELETON = [
  [15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8], [7, 9],
  [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6],
];
const KEYPOINT_MIN_SCORE = 0; // keypoint scores are heatmap logits: > 0 is "more likely there than not"
// score_threshold=0: everything the model keeps, so that the slider can filter without asking again.
const DETECT_URL = "/detect?score_threshold=0&max_detections=1000&masks=rle&keypoints=true";

// ---- COCO RLE

/** The run lengths of a COCO compressed RLE string (pycocotools' rleFrString): alternating runs
 * of 0s and 1s, starting with 0s, over the mask in column-major order.
 * Each count is written in 5-bit groups, least significant first, as the character 48 + group,
 * plus 32 when another group follows; bit 16 of the last group is the sign. From the fourth
 * count on, a count is stored as its difference to the count two before it. */
function decodeRle(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k); // arithmetic, not <<: JS shifts wrap at 32 bits
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k); // sign-extend
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

/** The 1-runs of an RLE cut at column ends: flat [x, y, length, ...], each a vertical segment. */
function maskSegments(counts, height) {
  const segments = [];
  let pos = 0;
  decodeRle(counts).forEach((run, i) => {
    if (i % 2 === 0) {
      pos += run;
      return;
    }
    for (let left = run; left > 0;) {
      const x = Math.floor(pos / height);
      const y = pos % height;
      const n = Math.min(left, height - y);
      segments.push(x, y, n);
      pos += n;
      left -= n;
    }
  });
  return segments;
}

// ---- state and elements

const state = {
  file: null, // the File being shown
  image: null, // its decoded HTMLImageElement
  result: null, // the /detect response
  segments: [], // per detection: its mask as vertical segments, or null
  key: null, // bearer key, asked for after a 401; kept in memory only
  requests: 0, // POST /detect calls made by this page
  sequence: 0, // the latest upload; answers to older ones are dropped
};
const $ = (id) => document.getElementById(id);

function setStatus(pageState, message) {
  document.body.dataset.state = pageState;
  $("status").textContent = message;
}

function colour(label) {
  const [r, g, b] = PALETTE[label % PALETTE.length];
  return `rgb(${r}, ${g}, ${b})`;
}

// ---- detecting

async function choose(file) {
  if (!file) return;
  state.file = file;
  state.result = null;
  $("json").textContent = "";
  for (const cell of document.querySelectorAll("#timings td")) cell.textContent = "–";
  const sequence = ++state.sequence;
  const image = new Image();
  if (state.image) URL.revokeObjectURL(state.image.src);
  image.src = URL.createObjectURL(file);
  state.image = image;
  try {
    await image.decode();
  } catch {
    // The browser cannot show it; the service may still read it (or will say why not).
  }
  if (sequence !== state.sequence) return;
  draw(); // the image alone, while the service looks at it
  await detect();
}

/** A sample image of the page (GET /static/samples/NAME), then as a chosen file. */
async function chooseSample(name) {
  const sequence = ++state.sequence; // a later choice, while this one downloads, wins
  $("file").value = ""; // the file field no longer names what is shown
  setStatus("loading", `Loading ${name}…`);
  let response;
  try {
    response = await fetch(`/static/samples/${encodeURIComponent(name)}`);
  } catch (error) {
    if (sequence === state.sequence) setStatus("error", `The service could not be reached (${error.message}).`);
    return;
  }
  if (sequence !== state.sequence) return;
  if (!response.ok) return setStatus("error", `GET /static/samples/${name} answered ${response.status}`);
  const blob = await response.blob();
  if (sequence !== state.sequence) return;
  await choose(new File([blob], name, { type: blob.type || "image/png" }));
}

async function detect() {
  const sequence = state.sequence;
  const form = new FormData();
  form.append("image", state.file);
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  state.requests += 1;
  $("canvas").dataset.requests = String(state.requests);
  $("key-form").hidden = true;
  setStatus("loading", `Detecting in ${state.file.name}…`);
  const started = performance.now();
  let response;
  let body;
  try {
    response = await fetch(DETECT_URL, { method: "POST", body: form, headers });
    body = await response.json().catch(() => null);
  } catch (error) {
    if (sequence === state.sequence) setStatus("error", `The service could not be reached (${error.message}).`);
    return;
  }
  if (sequence !== state.sequence) return;
  if (response.status === 401) return askForKey(state.key !== null);
  if (!response.ok || body === null) {
    const detail = body && body.detail ? body.detail : response.statusText || "not JSON";
    return setStatus("error", `POST /detect answered ${response.status}: ${detail}`);
  }
  show(body, performance.now() - started);
}

/** GET /v1/model into the "Model" section: the preset and the classes it detects (the trained file's,
 * for a model trained on one's own data). Asked again while the model loads (503), and once a key is
 * given (401). */
async function loadModel() {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  let response;
  try {
    response = await fetch("/v1/model", { headers });
  } catch {
    return; // the service is unreachable: POST /detect will say so
  }
  if (response.status === 503) {
    setTimeout(loadModel, 2000);
    return;
  }
  if (!response.ok) return;
  const info = await response.json();
  $("model-name").textContent = `${info.preset}${info.weights ? ` (${info.weights})` : ""} on ${info.device}`;
  $("classes").textContent = info.classes.slice(1).join(", ");
}

function askForKey(refused) {
  setStatus("key-needed", refused ? "That key was refused; try another." : "This service needs an API key.");
  $("key-form").hidden = false;
  $("key").select(); // a refused key is selected, to type over
  $("key").focus();
}

function show(result, roundTripMs) {
  state.result = result;
  state.segments = result.detections.map((det) =>
    det.mask && typeof det.mask.counts === "string" ? maskSegments(det.mask.counts, result.height) : null);
  const ms = (value) => `${value.toFixed(1)} ms`;
  $("t-queue").textContent = ms(result.timings.queue_ms);
  $("t-inference").textContent = ms(result.timings.inference_ms);
  $("t-total").textContent = ms(result.timings.total_ms);
  $("t-roundtrip").textContent = ms(roundTripMs);
  $("json").textContent = prettyJson(result);
  draw();
  setStatus("done", `${result.model} found ${result.detections.length} detections in ${state.file.name}.`);
}

/** JSON with two-space indents, but each innermost array of numbers on one line. */
function prettyJson(value) {
  return JSON.stringify(value, null, 2).replace(/\[\s+([-\d.e+,\s]+?)\s+\]/g,
    (_, inner) => `[${inner.trim().split(/\s*,\s*/).join(", ")}]`);
}

// ---- drawing

function threshold() {
  return Number($("threshold").value);
}

function draw() {
  const canvas = $("canvas");
  const result = state.result;
  if (!result) {
    drawImageOnly(canvas);
    return;
  }
  const started = performance.now();
  if (canvas.width !== result.width || canvas.height !== result.height) {
    canvas.width = result.width;
    canvas.height = result.height;
  }
  const ctx = canvas.getContext("2d");
  if (state.image.naturalWidth > 0) {
    ctx.drawImage(state.image, 0, 0, result.width, result.height);
  } else { // the service read an image this browser cannot show: the detections on grey
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, result.width, result.height);
  }
  const t = threshold();
  // Worst first, so the best detections are drawn on top. Same test as the server: score >= t.
  const shown = result.detections.map((det, i) => i).filter((i) => result.detections[i].score >= t).reverse();
  const px = canvas.clientWidth > 0 ? result.width / canvas.clientWidth : 1; // canvas pixels per CSS pixel
  const withMasks = $("show-masks").checked ? shown.filter((i) => state.segments[i] !== null) : [];
  const withKeypoints = $("show-keypoints").checked ? shown.filter((i) => result.detections[i].keypoints) : [];
  withMasks.forEach((i) => drawMask(ctx, state.segments[i], colour(result.detections[i].label)));
  shown.forEach((i) => drawBox(ctx, result.detections[i], px));
  withKeypoints.forEach((i) => drawKeypoints(ctx, result.detections[i], px));
  shown.forEach((i) => drawLabel(ctx, result.detections[i], px));
  Object.assign(canvas.dataset, {
    drawn: String(shown.length),
    masksDrawn: String(withMasks.length),
    keypointsDrawn: String(withKeypoints.length),
  });
  $("count").textContent = `${shown.length} of ${result.detections.length} detections score ${t.toFixed(2)} or more.`;
  $("t-draw").textContent = `${(performance.now() - started).toFixed(1)} ms`;
}

function drawImageOnly(canvas) {
  const image = state.image;
  if (!image || !image.complete || image.naturalWidth === 0) return; // nothing chosen, or not decodable here
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  canvas.getContext("2d").drawImage(image, 0, 0);
  Object.assign(canvas.dataset, { drawn: "0", masksDrawn: "0", keypointsDrawn: "0" });
  $("count").textContent = "";
}

function drawMask(ctx, segments, fill) {
  ctx.save();
  ctx.globalAlpha = MASK_ALPHA;
  ctx.fillStyle = fill;
  for (let s = 0; s < segments.length; s += 3) ctx.fillRect(segments[s], segments[s + 1], 1, segments[s + 2]);
  ctx.restore();
}

function drawBox(ctx, det, px) {
  const [x1, y1, x2, y2] = det.bbox;
  ctx.lineWidth = 2 * px;
  ctx.strokeStyle = colour(det.label);
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

function drawKeypoints(ctx, det, px) {
  const points = det.keypoints.map(([x, y, score]) => (score > KEYPOINT_MIN_SCORE ? [x, y] : null));
  ctx.strokeStyle = colour(det.label);
  ctx.lineWidth = 2 * px;
  if (points.length === 17) {
    ctx.beginPath();
    for (const [a, b] of COCO_SKELETON) {
      if (points[a] && points[b]) {
        ctx.moveTo(...points[a]);
        ctx.lineTo(...points[b]);
      }
    }
    ctx.stroke();
  }
  ctx.fillStyle = "white";
  ctx.lineWidth = px;
  for (const point of points) {
    if (!point) continue;
    ctx.beginPath();
    ctx.arc(point[0], point[1], 3 * px, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
  }
}

function drawLabel(ctx, det, px) {
  const text = `${det.category} ${det.score.toFixed(2)}`;
  const [x1, y1] = det.bbox;
  ctx.font = `${12 * px}px system-ui, sans-serif`;
  const width = ctx.measureText(text).width + 4 * px;
  const height = 16 * px;
  const y = y1 >= height ? y1 - height : y1; // above the box, unless that is off the image
  ctx.fillStyle = colour(det.label);
  ctx.fillRect(x1, y, width, height);
  ctx.fillStyle = "black";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x1 + 2 * px, y + height / 2);
}

// ---- wiring

function onThreshold() {
  $("threshold-value").textContent = threshold().toFixed(2);
  draw();
}

function wire() {
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  for (const button of document.querySelectorAll("#samples button")) {
    button.addEventListener("click", () => chooseSample(button.dataset.sample));
  }
  $("threshold").addEventListener("input", onThreshold);
  $("show-masks").addEventListener("change", draw);
  $("show-keypoints").addEventListener("change", draw);
  window.addEventListener("resize", draw); // line widths follow the displayed size
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim() || null;
    loadModel();
    if (state.file) detect();
  });
  // Drops anywhere: the browser would otherwise leave the page to open the file.
  const zone = $("dropzone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) zone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files[0]);
  });
  onThreshold();
  loadModel();
}

// For the browser tests, and for anyone poking at the page from the console.
window.detectorPage = { decodeRle, maskSegments, state, constants: { palette: PALETTE, skeleton: COCO_SKELETON } };
wire();
