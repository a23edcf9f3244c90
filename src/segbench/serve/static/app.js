// segbench serve: upload an image, show the input, the mask over it, and a legend with shares.
"use strict";
const $ = (id) => document.getElementById(id);
let limits = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    const info = await r.json();
    limits = info.limits;
    const m = info.val_metrics && info.val_metrics.mIoU != null ? `, val mIoU ${(100 * info.val_metrics.mIoU).toFixed(1)}%` : "";
    $("run-info").textContent = `run ${info.run_key}: ${info.arch} (${info.model}), loss ${info.loss}, ` +
      `${info.num_classes} classes${m}`;
    $("limits").textContent = `Limits: ${limits.max_upload_mb} MB per file, ` +
      `${limits.max_pixels.toLocaleString("en")} pixels per image. The image is padded to a multiple of ` +
      `${info.pad_multiple} px for the network and the mask cropped back (never resized).`;
  } catch (e) {
    showError(`cannot reach the server: ${e}`);
  }
}

function legend(classes) {
  const list = $("legend");
  list.replaceChildren();
  const present = classes.filter((c) => c.pixels > 0).sort((a, b) => b.pixels - a.pixels);
  for (const c of present) {
    const li = document.createElement("li");
    li.className = "legend-entry";
    li.dataset.classId = c.id;
    const color = `rgb(${c.color.join(",")})`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${(100 * c.share).toFixed(c.share < 0.001 ? 3 : 1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(100 * c.share, 0.5)}%`;
    fill.style.background = color;
    bar.append(fill);
    li.append(sw, name, share, bar);
    list.append(li);
  }
}

async function segment(file) {
  clearError();
  if (!file) { showError("choose an image file first"); return; }
  if (limits && file.size > limits.max_upload_bytes) {
    showError(`${(file.size / 1e6).toFixed(1)} MB is larger than this server's limit of ${limits.max_upload_mb} MB: send a smaller file`);
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name);
  $("submit").disabled = true;
  $("status").textContent = `segmenting ${file.name}…`;
  try {
    const r = await fetch("/api/segment?images=1", { method: "POST", body });
    let data;
    try { data = await r.json(); } catch (e) { data = { error: `the server answered ${r.status} ${r.statusText}` }; }
    if (!r.ok) { showError(data.error || `the server answered ${r.status}`); return; }
    $("input-img").src = `data:image/png;base64,${data.input_png}`;
    $("overlay-base").src = `data:image/png;base64,${data.input_png}`;
    $("mask-img").src = `data:image/png;base64,${data.color_png}`;
    legend(data.classes);
    $("notes").textContent = data.notes.length ? `Input: ${data.notes.join("; ")}.` : "";
    $("status").textContent = `${file.name}: ${data.width}×${data.height} px, ${data.input_format} ${data.input_mode}, ` +
      `segmented in ${data.seconds.toFixed(2)} s`;
    $("result").hidden = false;
  } catch (e) {
    showError(`the upload failed: ${e}`);
  } finally {
    $("submit").disabled = false;
  }
}

$("upload-form").addEventListener("submit", (ev) => { ev.preventDefault(); segment($("file").files[0]); });
$("file").addEventListener("change", () => segment($("file").files[0]));
$("opacity").addEventListener("input", () => { $("mask-img").style.opacity = $("opacity").value; });
const drop = $("upload-form");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer.files.length) segment(ev.dataTransfer.files[0]);
});
loadInfo();
