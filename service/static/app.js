// The page: a widget per input the model takes (its kind's module in kinds/, or kinds/file.js: a file chooser, a text
// box for a value), read from /v1/models; it sends them to /v1/predict like any client and shows the answer. Nothing
// here knows a modality by name: each kind's widget does.
import { formatBytes, readError, renderResult, showError, hideError } from "./render.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "mla-api-key";

const state = {
  model: null, // the /v1/models answer
  clips: {}, // per modality: {blob, name, source, url}, or {text} for a value; null while empty
  widgets: {}, // per modality: what its widget's mount returned ({card, show(clip), hide()})
  recording: null, // the microphone or camera recording running (recorder.js)
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
  await describeModel(state.model);
  if (!state.model.ready) setTimeout(loadModel, 2000);
}

function seconds(x) {
  return `${Number(x.toFixed(2))} s`;
}

// What a kind's settings say about its input, in a few words (the keys its manifest entry has).
function sizes(entry) {
  if (entry.clip_seconds) return ` (${seconds(entry.clip_seconds)} at ${entry.sample_rate / 1000} kHz)`;
  if (entry.frames) return ` (${entry.frames} frames at ${entry.width}×${entry.height})`;
  if (entry.height) return ` (${entry.width}×${entry.height})`;
  if (entry.max_bytes) return ` (${entry.max_bytes} bytes)`;
  return "";
}

// A bound in words, from the keys a kind's limits have.
function bound(kind, limits) {
  const out = [];
  if (limits.max_seconds) out.push(`${seconds(limits.max_seconds)} of ${kind}`);
  if (limits.max_pixels) out.push(`${kind} pictures up to ${(limits.max_pixels / 1e6).toFixed(1)} megapixels`);
  if (limits.max_bytes) out.push(`${formatBytes(limits.max_bytes)} of ${kind}`);
  return out;
}

async function describeModel(m) {
  const mods = m.modalities || {};
  const inputs = m.inputs || {};
  const providers = [...new Set(Object.values(m.providers || {}).map((p) => p.replace("ExecutionProvider", "")))];
  const labels = m.labels || [];
  const shown = labels.length > 12 ? `${labels.slice(0, 12).join(", ")}, …` : labels.join(", ");
  const parts = Object.keys(mods).map((k) => `${k}${sizes(mods[k])}`);
  for (const kind of Object.keys(mods)) {
    if (state.widgets[kind]) continue; // mounted when /v1/models was first read
    const info = inputs[kind] || { field: "file", accept: "", description: kind, widget: "file", limits: {} };
    let widget;
    try {
      widget = await import(`./kinds/${info.widget || "file"}.js`);
    } catch {
      widget = await import("./kinds/file.js"); // a kind this page has no widget for: a file chooser
    }
    const w = widget.mount(page, kind, info, mods[kind]);
    w.card.dataset.modality = kind;
    $("inputs").append(w.card);
    state.widgets[kind] = w;
    state.clips[kind] = null;
  }
  mountBorrows(inputs);
  // written once every widget is in place: "Model ..." on this line means the page is ready for input
  $("model-line").textContent =
    `Model ${m.name} v${m.version} · ${labels.length} labels: ${shown} · ${parts.join(", ")}` +
    (providers.length ? ` · ${providers.join(", ")}` : "") +
    (m.ready === false ? " · warming up…" : "");
  const l = m.limits;
  if (l) {
    const per = Object.keys(mods).flatMap((k) => bound(k, (inputs[k] && inputs[k].limits) || {}));
    $("limits-line").textContent = `Limits: ${[`${formatBytes(l.max_upload_bytes)} per request`, ...per].join(", ")}.`;
  }
  updateControls();
}

// ---- inputs one kind can take from another's file (a video's sound as the audio): a check box in the source's card
function mountBorrows(inputs) {
  for (const [target, info] of Object.entries(inputs)) {
    const b = info.borrow;
    if (!b || !state.widgets[b.from] || !state.widgets[target] || $(b.flag.replaceAll("_", "-"))) continue;
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = b.flag.replaceAll("_", "-");
    box.dataset.flag = b.flag;
    box.dataset.target = target;
    box.dataset.source = b.from;
    box.disabled = true;
    label.append(box, ` Use the ${b.from}'s sound as the ${target}`);
    state.widgets[b.from].card.append(label);
  }
}

function borrows() {
  return [...document.querySelectorAll("input[data-flag]")].map((box) => ({
    box,
    flag: box.dataset.flag,
    target: box.dataset.target,
    source: box.dataset.source,
  }));
}

// A source just recorded with what another input could take: check its box, if that input is empty.
function borrowFrom(source) {
  for (const b of borrows()) if (b.source === source && !state.clips[b.target]) b.box.checked = true;
  updateControls();
}

// ---- clips
function setClip(kind, blob, name, source) {
  clearClip(kind);
  const url = URL.createObjectURL(blob);
  state.clips[kind] = { blob, name, source, url };
  state.widgets[kind].show(state.clips[kind]);
  hideError();
  updateControls();
}

function clearClip(kind) {
  const clip = state.clips[kind];
  if (clip && clip.url) URL.revokeObjectURL(clip.url);
  state.clips[kind] = null;
  if (state.widgets[kind]) state.widgets[kind].hide();
  updateControls();
}

function updateControls() {
  for (const b of borrows()) {
    b.box.disabled = !state.clips[b.source] || !!state.clips[b.target];
    if (b.box.disabled) b.box.checked = false;
  }
  const busy = !!state.xhr || !!state.recording;
  const what = Object.keys(state.clips).filter((k) => state.clips[k]);
  $("send").disabled = busy || !what.length;
  $("cancel").hidden = !state.xhr;
  if (!busy) {
    const names = what.length > 1 ? `${what.slice(0, -1).join(", ")} and ${what[what.length - 1]}` : what[0];
    setStatus(what.length ? `Ready to send ${names}.` : "Add an input first.");
  }
}

// What the widgets may call.
const page = { state, setClip, clearClip, updateControls, setStatus, showError, hideError, formatBytes, borrowFrom };

// ---- sending
function send(event) {
  event.preventDefault();
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
      limitsText: $("limits-line").textContent,
    });
    return;
  }
  const form = new FormData();
  for (const [kind, c] of given) {
    if (c.blob) form.append(kind, c.blob, c.name);
    else form.append(kind, c.text);
  }
  for (const b of borrows()) if (b.box.checked && !b.box.disabled) form.append(b.flag, "true");
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
    showError({ ...err, limitsText: $("limits-line").textContent, requestId });
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
  $("predict-form").addEventListener("submit", send);
  $("cancel").addEventListener("click", () => state.xhr && state.xhr.abort());
  updateControls();
  loadModel();
}

main();
