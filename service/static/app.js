// The page: pick, record or draw clips (audio, video), add any other input the model takes (an image, text: a card
// built from /v1/models), send them to /v1/predict like any client, show the answer.
import {
  AUDIO_TYPES,
  VIDEO_TYPES,
  DrawPad,
  Recording,
  deviceErrorMessage,
  extensionOf,
  levelMeter,
  recordDigitClip,
  recordingUnavailable,
} from "./media.js";
import { formatBytes, readError, renderResult, showError, hideError } from "./render.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "mla-api-key";

const state = {
  model: null, // the /v1/models answer
  clips: { audio: null, video: null }, // per modality: {blob, name, source, url}, or {text} for a value
  widgets: new Set(["audio", "video"]), // the modalities with a card of their own in index.html
  recording: null, // {kind, rec, stopMeter, timer}
  xhr: null,
};

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

function showKeyField(focus) {
  $("key-section").hidden = false;
  if (focus) $("api-key").focus();
}

// ---- the model's description: labels, inputs, limits
async function loadModel() {
  let r;
  try {
    r = await fetch("/v1/models", { headers: authHeaders() });
  } catch (err) {
    $("model-line").textContent = `The service did not answer /v1/models (${err.message}).`;
    return;
  }
  if (r.status === 401) {
    showKeyField(false);
    $("model-line").textContent = "This service needs an API key: enter it below to see the model.";
    return;
  }
  if (!r.ok) {
    const err = readError(r.status, await r.text(), r.headers.get("retry-after"));
    $("model-line").textContent = `/v1/models answered ${r.status}: ${err.message}`;
    return;
  }
  state.model = await r.json();
  describeModel(state.model);
  if (!state.model.ready) setTimeout(loadModel, 2000);
}

function seconds(x) {
  return `${Number(x.toFixed(2))} s`;
}

function describeModel(m) {
  const mods = m.modalities || {};
  const parts = [];
  if (mods.audio) parts.push(`audio (${seconds(mods.audio.clip_seconds)} at ${mods.audio.sample_rate / 1000} kHz)`);
  if (mods.video) parts.push(`video (${mods.video.frames} frames at ${mods.video.width}×${mods.video.height})`);
  for (const k of Object.keys(mods)) if (!state.widgets.has(k)) parts.push(k);
  const providers = [...new Set(Object.values(m.providers || {}).map((p) => p.replace("ExecutionProvider", "")))];
  const labels = m.labels || [];
  const shown = labels.length > 12 ? `${labels.slice(0, 12).join(", ")}, …` : labels.join(", ");
  $("model-line").textContent =
    `Model ${m.name} v${m.version} · ${labels.length} labels: ${shown} · ${parts.join(", ")}` +
    (providers.length ? ` · ${providers.join(", ")}` : "") +
    (m.ready === false ? " · warming up…" : "");
  if (mods.audio) {
    $("audio-hint").textContent =
      `A spoken word or any sound. The model hears the first ${seconds(mods.audio.clip_seconds)}: start right away.`;
  }
  if (mods.video) {
    $("video-hint").textContent =
      `A clip of a handwritten digit, or whatever the model learnt: it sees ${mods.video.frames} frames spread over the clip.`;
  }
  const others = Object.keys(mods).filter((k) => !state.widgets.has(k));
  for (const kind of state.widgets) {
    if (!mods[kind]) {
      $(`${kind}-card`).disabled = true;
      $(`${kind}-hint`).textContent = `This model has no ${kind} input.`;
      $(`${kind}-card`).hidden = others.length > 0; // a model of other inputs: only its own cards
    }
  }
  const inputs = m.inputs || {};
  for (const kind of others) mountCard(kind, inputs[kind] || { field: "file", accept: "", description: kind });
  const l = m.limits;
  if (l) {
    const per = [];
    if (mods.audio) per.push(`${seconds(l.max_audio_seconds)} of audio`);
    if (mods.video) per.push(`${seconds(l.max_video_seconds)} of video, ${(l.max_video_pixels / 1e6).toFixed(1)} megapixels a frame`);
    if (mods.image && l.max_image_pixels) per.push(`${(l.max_image_pixels / 1e6).toFixed(1)} megapixels an image`);
    if (mods.text && l.max_text_bytes) per.push(`${formatBytes(l.max_text_bytes)} of text`);
    $("limits-line").textContent = `Limits: ${[`${formatBytes(l.max_upload_bytes)} per request`, ...per].join(", ")}.`;
  }
  updateControls();
}

// ---- a card for an input without a widget of its own: a file chooser, or a text box for a value
function mountCard(kind, info) {
  if ($(`${kind}-card`)) return; // mounted when /v1/models was first read
  const card = $("input-card").content.firstElementChild.cloneNode(true);
  card.id = `${kind}-card`;
  card.dataset.modality = kind;
  card.querySelector("legend").textContent = kind.charAt(0).toUpperCase() + kind.slice(1);
  card.querySelector(".hint").textContent = `${info.description.charAt(0).toUpperCase()}${info.description.slice(1)}.`;
  const input = card.querySelector(".file-input");
  input.id = `${kind}-file`;
  input.accept = info.accept || "";
  const chooser = card.querySelector(".file-actions label");
  chooser.htmlFor = input.id;
  chooser.textContent = `Choose ${/^[aeiou]/.test(kind) ? "an" : "a"} ${kind} file`;
  const clear = card.querySelector(".clear");
  clear.id = `${kind}-clear`;
  clear.querySelector(".sr-only").textContent = ` the ${kind}`;
  card.querySelector(".clip").id = `${kind}-clip`;
  card.querySelector(".name").id = `${kind}-name`;
  const preview = card.querySelector(".image-preview");
  preview.id = `${kind}-image`;
  preview.alt = `The ${kind} chosen`;
  if (info.field === "value") {
    const box = card.querySelector("textarea");
    box.id = `${kind}-value`;
    const label = card.querySelector(".value-label");
    label.htmlFor = box.id;
    label.textContent = `Type the ${kind}, or choose a file of it`;
    card.querySelector(".value-actions").hidden = false;
    const limit = info.limits && info.limits.max_bytes;
    box.addEventListener("input", () => {
      const text = box.value;
      state.clips[kind] = text.trim() ? { text } : null;
      if (limit && new TextEncoder().encode(text).length > limit) {
        showError({ status: 413, code: "too_large", message: `The ${kind} is longer than ${limit} bytes.`, note: "Checked here." });
      } else hideError();
      updateControls();
    });
  }
  input.addEventListener("change", () => onFile(kind));
  clear.addEventListener("click", () => clearClip(kind));
  $("more-inputs").append(card);
  state.clips[kind] = null;
}

// ---- clips
function setClip(kind, blob, name, source) {
  clearClip(kind);
  const url = URL.createObjectURL(blob);
  state.clips[kind] = { blob, name, source, url };
  if (state.widgets.has(kind)) {
    $(`${kind}-noplay`).hidden = true;
    $(`${kind}-preview`).hidden = false;
    $(`${kind}-preview`).src = url;
  } else {
    const img = $(`${kind}-image`);
    img.hidden = !blob.type.startsWith("image/");
    if (!img.hidden) img.src = url;
    const box = $(`${kind}-value`);
    if (box) box.value = "";
  }
  $(`${kind}-name`).textContent = `${name} · ${formatBytes(blob.size)} · ${source}`;
  $(`${kind}-clip`).hidden = false;
  hideError();
  updateControls();
}

function clearClip(kind) {
  const clip = state.clips[kind];
  if (clip && clip.url) URL.revokeObjectURL(clip.url);
  state.clips[kind] = null;
  if (state.widgets.has(kind)) $(`${kind}-preview`).removeAttribute("src");
  else $(`${kind}-image`).removeAttribute("src");
  $(`${kind}-clip`).hidden = true;
  updateControls();
}

function updateControls() {
  const { audio, video } = state.clips;
  const useVideoAudio = $("use-video-audio");
  useVideoAudio.disabled = !video || !!audio;
  if (useVideoAudio.disabled) useVideoAudio.checked = false;
  const busy = !!state.xhr || !!state.recording;
  const what = Object.keys(state.clips).filter((k) => state.clips[k]);
  $("send").disabled = busy || !what.length;
  $("cancel").hidden = !state.xhr;
  if (!busy) {
    const names = what.length > 1 ? `${what.slice(0, -1).join(", ")} and ${what[what.length - 1]}` : what[0];
    setStatus(what.length ? `Ready to send ${names}.` : "Add an input first.");
  }
}

function onFile(kind) {
  const input = $(`${kind}-file`);
  const file = input.files && input.files[0];
  if (file) setClip(kind, file, file.name, "file");
  input.value = ""; // choosing the same file again still fires change
}

// ---- recording from the microphone or the camera
async function toggleRecording(kind) {
  if (state.recording) {
    const same = state.recording.kind === kind;
    await stopRecording();
    if (same) return;
  }
  const device = kind === "audio" ? "microphone" : "camera";
  const why = recordingUnavailable();
  if (why) {
    showError({ status: 0, title: `Cannot record the ${device}`, message: why });
    return;
  }
  const withSound = kind === "video" && $("cam-sound").checked;
  const constraints =
    kind === "audio"
      ? { audio: { echoCancellation: false, noiseSuppression: false } } // the model hears the sound as it is
      : { video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: withSound };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    showError({ status: 0, title: `Cannot record the ${device}`, message: deviceErrorMessage(err, device) });
    return;
  }
  hideError();
  const rec = new Recording(stream, kind === "audio" ? AUDIO_TYPES : VIDEO_TYPES);
  const limits = (state.model && state.model.limits) || {};
  const clip = state.model && state.model.modalities && state.model.modalities.audio;
  // Enough for a word past the model's clip, never past the service's limit.
  const most =
    kind === "audio"
      ? Math.min(limits.max_audio_seconds || 60, Math.max(3, Math.ceil(clip ? clip.clip_seconds : 1) + 2))
      : Math.min(limits.max_video_seconds || 60, 10);
  const button = kind === "audio" ? $("mic-button") : $("cam-button");
  const live = kind === "audio" ? $("mic-live") : $("cam-live");
  const timerText = kind === "audio" ? $("mic-timer") : $("cam-timer");
  let stopMeter = () => {};
  if (kind === "audio") stopMeter = levelMeter(stream, $("mic-level"));
  else {
    $("cam-preview").srcObject = stream;
    $("cam-preview").play().catch(() => {});
  }
  const timer = setInterval(() => {
    timerText.textContent = `Recording ${rec.seconds.toFixed(1)} s of at most ${most} s`;
    if (rec.seconds >= most) stopRecording();
  }, 100);
  state.recording = { kind, rec, stopMeter, timer, withSound, device };
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  live.hidden = false;
  rec.start();
  setStatus(`Recording the ${device}…`);
  updateControls();
}

async function stopRecording() {
  const r = state.recording;
  if (!r) return;
  state.recording = null;
  clearInterval(r.timer);
  r.stopMeter();
  const took = r.rec.seconds;
  let blob;
  try {
    blob = await r.rec.stop();
  } catch (err) {
    showError({ status: 0, title: `The ${r.device} recording failed`, message: String(err.message || err) });
    blob = null;
  }
  const button = r.kind === "audio" ? $("mic-button") : $("cam-button");
  button.textContent = r.kind === "audio" ? "Record the microphone" : "Record the camera";
  button.setAttribute("aria-pressed", "false");
  (r.kind === "audio" ? $("mic-live") : $("cam-live")).hidden = true;
  if (r.kind === "video") $("cam-preview").srcObject = null;
  if (blob && blob.size) {
    setClip(r.kind, blob, `${r.device}.${extensionOf(blob.type)}`, `${r.device}, ${took.toFixed(1)} s`);
    if (r.withSound && !state.clips.audio) $("use-video-audio").checked = true;
  } else if (blob) {
    showError({ status: 0, title: `The ${r.device} recording is empty`, message: "Nothing was recorded; try again." });
  }
  updateControls();
}

// ---- the drawing pad
function setupPad() {
  const pad = new DrawPad($("pad"));
  $("draw-button").addEventListener("click", () => {
    const panel = $("draw-panel");
    panel.hidden = !panel.hidden;
    $("draw-button").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("pad-clear").addEventListener("click", () => pad.clear());
  $("stamp").addEventListener("input", (e) => {
    const digit = e.target.value.replace(/[^0-9]/g, "");
    e.target.value = digit;
    if (digit) pad.stamp(digit);
  });
  $("pad-use").addEventListener("click", async () => {
    const button = $("pad-use");
    button.disabled = true;
    setStatus("Making a one-second clip of the drawing…");
    try {
      const blob = await recordDigitClip(pad, $("clip-canvas"));
      setClip("video", blob, `drawing.${extensionOf(blob.type)}`, "drawing, 1 s");
    } catch (err) {
      showError({ status: 0, title: "Cannot make a clip of the drawing", message: String(err.message || err) });
    } finally {
      button.disabled = false;
      updateControls();
    }
  });
}

// ---- sending
function send(event) {
  event.preventDefault();
  const { audio, video } = state.clips;
  const given = Object.entries(state.clips).filter(([, c]) => c);
  if (!given.length) return;
  const limit = state.model && state.model.limits && state.model.limits.max_upload_bytes;
  const total = given.reduce((n, [, c]) => n + (c.blob ? c.blob.size : new TextEncoder().encode(c.text).length), 0);
  if (limit && total > limit) {
    showError({
      status: 413,
      code: "too_large",
      message: `The files are ${formatBytes(total)} together; this service accepts at most ${formatBytes(limit)} per request.`,
      note: "Checked here: nothing was sent.",
      limits: state.model.limits,
    });
    return;
  }
  const form = new FormData();
  for (const [kind, c] of given) {
    if (c.blob) form.append(kind, c.blob, c.name);
    else form.append(kind, c.text);
  }
  if ($("use-video-audio").checked && video && !audio) form.append("use_video_audio", "true");
  const threshold = $("min-confidence").value.trim();
  if (threshold) form.append("min_confidence", threshold); // the service checks it and words any error

  const xhr = new XMLHttpRequest(); // not fetch: it reports upload progress
  state.xhr = xhr;
  const t0 = performance.now();
  xhr.open("POST", "/v1/predict");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setStatus(`Sending ${formatBytes(e.loaded)} of ${formatBytes(e.total)}…`);
  };
  xhr.upload.onload = () => setStatus("Sent; waiting for the model…");
  const finish = () => {
    state.xhr = null;
    updateControls();
  };
  xhr.onload = () => {
    finish();
    const ms = performance.now() - t0;
    const requestId = xhr.getResponseHeader("x-request-id");
    if (xhr.status === 200) {
      let body;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        showError({ status: 200, title: "The service answered 200, but not with JSON", message: xhr.responseText.slice(0, 300) });
        setStatus("The answer could not be read.");
        return;
      }
      const summary = renderResult(body, { labels: state.model && state.model.labels, ms, requestId });
      setStatus(summary);
      return;
    }
    const err = readError(xhr.status, xhr.responseText, xhr.getResponseHeader("retry-after"));
    if (xhr.status === 401) showKeyField(true);
    showError({ ...err, limits: state.model && state.model.limits, requestId });
    setStatus(`The service answered ${xhr.status}.`);
  };
  xhr.onerror = () => {
    finish();
    showError({ status: 0, title: "No answer", message: "The service could not be reached: check that it is running and try again." });
    setStatus("No answer from the service.");
  };
  xhr.onabort = () => {
    finish();
    setStatus("Cancelled; nothing was predicted.");
  };
  hideError();
  setStatus("Sending…");
  updateControls();
  xhr.send(form);
}

// ---- wiring
function main() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  if (key.value) $("key-section").hidden = false;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, key.value.trim());
    hideError();
    loadModel();
  });
  for (const kind of ["audio", "video"]) {
    const preview = $(`${kind}-preview`);
    preview.addEventListener("error", () => {
      // Chromium plays neither MPEG-4 Part 2 nor FLV, say; only the preview is lost.
      if (state.clips[kind] && preview.src === state.clips[kind].url) {
        preview.hidden = true;
        $(`${kind}-noplay`).hidden = false;
      }
    });
    $(`${kind}-file`).addEventListener("change", () => onFile(kind));
    $(`${kind}-clear`).addEventListener("click", () => clearClip(kind));
  }
  $("mic-button").addEventListener("click", () => toggleRecording("audio"));
  $("cam-button").addEventListener("click", () => toggleRecording("video"));
  $("predict-form").addEventListener("submit", send);
  $("cancel").addEventListener("click", () => state.xhr && state.xhr.abort());
  setupPad();
  updateControls();
  loadModel();
}

main();
