// CryptoFace web app: progressive enhancement only; every page works without this script.
"use strict";

// A running task's page: poll its state, update the progress bar and the steps, reload when it ends.
function watchTask(box) {
  const id = box.dataset.task;
  const state = document.getElementById("task-state");
  const step = document.getElementById("task-step");
  const bar = document.getElementById("server-progress");
  const text = document.getElementById("server-text");
  const steps = document.getElementById("steps");
  const ended = ["done", "failed", "cancelled"];
  if (ended.includes(box.dataset.state)) return;
  async function poll() {
    let view;
    try {
      const r = await fetch(`/api/tasks/${encodeURIComponent(id)}`, { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error(String(r.status));
      view = await r.json();
    } catch (err) {
      text.textContent = "lost contact with the app; retrying";
      setTimeout(poll, 2000);
      return;
    }
    if (ended.includes(view.state)) { window.location.reload(); return; }
    state.textContent = view.state;
    const running = view.steps.filter((s) => s.seconds === null).map((s) => s.name);
    step.textContent = running.length ? running[running.length - 1] : "";
    if (view.server && view.server.total) {
      bar.max = view.server.total;
      bar.value = view.server.done;
      text.textContent = `layer ${view.server.done} of ${view.server.total}` + (view.server.step ? ` (${view.server.step})` : "");
    }
    steps.replaceChildren(...view.steps.map((s) => {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      const b = document.createElement("td");
      a.textContent = s.name;
      b.textContent = s.seconds === null ? "…" : `${s.seconds.toFixed(2)} s`;
      tr.append(a, b);
      return tr;
    }));
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
}

// The home page: capture a frame from the camera into the file input, where the browser allows it.
function camera(form) {
  const box = document.getElementById("camera");
  const input = document.getElementById("photo");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || typeof DataTransfer === "undefined") return;
  box.hidden = false;
  const start = document.getElementById("camera-start");
  const capture = document.getElementById("camera-capture");
  const video = document.getElementById("camera-video");
  const status = document.getElementById("camera-status");
  start.addEventListener("click", async () => {
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      video.hidden = false;
      capture.hidden = false;
      status.textContent = "Camera on. Look at it and press Capture.";
    } catch (err) {
      status.textContent = `The camera is not available: ${err.name}. Choose a photo file instead.`;
    }
  });
  capture.addEventListener("click", () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      const files = new DataTransfer();
      files.items.add(new File([blob], "camera.png", { type: "image/png" }));
      input.files = files.files;
      video.srcObject.getTracks().forEach((t) => t.stop());
      video.hidden = true;
      capture.hidden = true;
      status.textContent = "Frame captured; press Detect and align.";
    }, "image/png");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const task = document.getElementById("task");
  if (task) watchTask(task);
  const form = document.getElementById("photo-form");
  if (form) camera(form);
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (ev) => { if (!window.confirm(f.dataset.confirm)) ev.preventDefault(); });
  });
});
