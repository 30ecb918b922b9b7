// The web page: pick or drop an image, type descriptions, POST them to /v1/ground, draw the boxes.
// Boxes are absolutely positioned elements over the image, placed in percent of the image's own pixel
// size, so they stay in place when the page is resized.
"use strict";

// Okabe-Ito colours, the same as `ofa_grounding.draw.PALETTE`
const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"];
const $ = (id) => document.getElementById(id);
let imageFile = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function useFile(file) {
  if (!file) return;
  imageFile = file;
  const url = URL.createObjectURL(file);
  $("picture").onload = () => URL.revokeObjectURL(url);
  $("picture").src = url;
  $("stage").hidden = false;
  $("boxes").replaceChildren();
  $("results").hidden = true;
  $("ground").disabled = false;
  setStatus(`${file.name || "image"} ready`);
}

// The confidence as `GroundingResult.confidence_label` words it: with a calibrated model, the probability
// that the answer is right ("93 % sure"); without one, the raw score, which is no probability.
function confidenceText(r) {
  if (!r.calibrated) return `raw score ${r.confidence.toFixed(3)} (uncalibrated)`;
  const p = r.confidence;
  return p >= 0.995 ? "> 99 % sure" : p < 0.005 ? "< 1 % sure" : `${Math.floor(100 * p + 0.5)} % sure`;
}

// "93 % sure" for a box, "not found (97 % sure)" for a "not found" answer.
function answerText(r) {
  if (r.found !== false) return confidenceText(r);
  return r.calibrated ? `not found (${confidenceText(r)})` : `not found, ${confidenceText(r)}`;
}

function drawResults(response) {
  const { width, height, results } = response;
  const boxes = $("boxes");
  const rows = $("results").querySelector("tbody");
  boxes.replaceChildren();
  rows.replaceChildren();
  results.forEach((r, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const [x0, x1] = [r.box[0], r.box[2]].sort((a, b) => a - b);
    const [y0, y1] = [r.box[1], r.box[3]].sort((a, b) => a - b);
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.index = i;
    box.style.borderColor = colour;
    box.style.left = `${(100 * x0) / width}%`;
    box.style.top = `${(100 * y0) / height}%`;
    box.style.width = `${(100 * (x1 - x0)) / width}%`;
    box.style.height = `${(100 * (y1 - y0)) / height}%`;
    const label = document.createElement("span");
    label.className = "label";
    label.style.background = colour;
    label.textContent = r.found === false ? `${r.text}: ${answerText(r)}` : `${r.text} (${answerText(r)})`;
    if (r.found === false) box.classList.add("not-found");
    box.append(label);
    boxes.append(box);

    const row = rows.insertRow();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour;
    row.insertCell().append(swatch);
    row.insertCell().textContent = r.text + (r.truncated ? " (truncated)" : "");
    row.insertCell().textContent = r.box.map((v) => v.toFixed(1)).join(", ");
    row.insertCell().textContent = answerText(r);
    row.insertCell().textContent = r.score.toFixed(3);
  });
  $("results").hidden = false;
}

async function ground() {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter((t) => t);
  if (!imageFile) return setStatus("pick an image first", true);
  if (!texts.length) return setStatus("type at least one description", true);
  const form = new FormData();
  form.append("image", imageFile, imageFile.name || "image");
  texts.forEach((t) => form.append("text", t));
  $("ground").disabled = true;
  setStatus("grounding…");
  const started = performance.now();
  try {
    const reply = await fetch("/v1/ground", { method: "POST", body: form });
    const body = await reply.json();
    if (!reply.ok) {
      const retry = reply.headers.get("Retry-After");
      setStatus(`${body.error ? body.error.message : reply.statusText}${retry ? ` (retry in ${retry} s)` : ""}`, true);
      return;
    }
    window.lastResponse = body; // for scripted checks
    drawResults(body);
    const ms = Math.round(performance.now() - started);
    setStatus(`${body.results.length} description(s) in ${ms} ms`);
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
  } finally {
    $("ground").disabled = false;
  }
}

$("file").addEventListener("change", (e) => useFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
$("example").addEventListener("click", async () => {
  const blob = await (await fetch("/static/example.png")).blob();
  useFile(new File([blob], "example.png", { type: blob.type }));
  // the example's four shapes (examples/README.md), which the bundled demo model was trained to find
  if (!$("texts").value.trim()) {
    $("texts").value = "the red circle\nthe blue square\nthe green triangle\nthe small yellow circle";
  }
});
$("ground").addEventListener("click", ground);
$("texts").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ground();
});

fetch("/v1/model").then((r) => r.json()).then((m) => {
  $("model-info").textContent = `${m.name} · ${m.preset} · ${(m.parameters / 1e6).toFixed(1)}M parameters · ${m.precision} on ${m.device}` +
    (m.calibrated ? " · calibrated confidence" : "");
  $("card-link").hidden = !m.card;  // the model card: the words, shapes and scenes it was trained on
}).catch(() => { $("model-info").textContent = ""; });
