// Rendering: the answer of /v1/predict (fused label, bars, entropy, weight and typicality per modality) and errors.
// Only textContent is ever set from what the service or a file name says: no HTML injection.

const $ = (id) => document.getElementById(id);

const KNOWN = new Set([
  "model", "label", "confidence", "probabilities", "modalities", "fusion", "abstained", "abstain_reason", "fused_modalities",
]);
const KNOWN_MODALITY = new Set([
  "label", "probabilities", "entropy", "weight", "typicality", "ood_score", "ood_threshold", "in_distribution", "fused",
]);
const STATUS_TEXT = {
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  408: "Request Timeout",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  422: "Unprocessable Content",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};
const MANY_LABELS = 12; // past this, the bars show the ten most probable and fold the rest

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** {status, code, message, retryAfter} from any answer: the API's JSON error, or whatever a proxy sent. */
export function readError(status, text, retryAfter) {
  let code = null;
  let message = null;
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error.message === "string") {
      code = body.error.code || null;
      message = body.error.message;
    } else if (body && body.detail !== undefined) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: a proxy's HTML page or plain text
  }
  if (message === null) {
    // A proxy's error page: its words, one space between elements (<h1>502 Bad Gateway</h1><hr>nginx).
    const doc = new DOMParser().parseFromString(text || "", "text/html");
    doc.querySelectorAll("script, style").forEach((e) => e.remove());
    const words = [];
    const walk = doc.createTreeWalker(doc.body || doc, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) words.push(n.textContent);
    message = words.join(" ").replace(/\s+/g, " ").trim().slice(0, 500) || "(the answer had no body)";
  }
  return { status, code, message, retryAfter };
}

function hintFor(err) {
  switch (err.status) {
    case 401:
      return "Enter the service's API key above and send again.";
    case 413:
      return err.limitsText || ""; // the page's own line of limits, built from /v1/models
    case 415:
      return `Accepted containers: ${document.body.dataset.accept.split(",").filter((x) => x.startsWith(".")).join(" ")}`;
    case 503:
      return err.retryAfter ? `Try again in ${err.retryAfter} s.` : "Try again shortly.";
    default:
      return "";
  }
}

export function showError(err) {
  const box = $("error");
  const parts = [];
  if (err.title) parts.push(err.title);
  else if (err.status) parts.push(`${err.status} ${STATUS_TEXT[err.status] || ""}`.trim());
  if (err.code) parts.push(err.code);
  $("error-title").textContent = parts.join(" · ") || "Error";
  box.dataset.status = String(err.status || 0);
  box.dataset.code = err.code || "";
  $("error-message").textContent = err.message;
  $("error-hint").textContent = [err.note, hintFor(err), err.requestId ? `Request id ${err.requestId}.` : ""]
    .filter(Boolean)
    .join(" ");
  $("result").hidden = true;
  box.hidden = false;
}

export function hideError() {
  $("error").hidden = true;
}

function bars(container, probabilities, order, name) {
  container.replaceChildren();
  container.setAttribute("role", "list");
  container.setAttribute("aria-label", name);
  const labels = order && order.every((l) => l in probabilities) ? order : Object.keys(probabilities);
  const top = labels.reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a), labels[0]);
  const row = (label) => {
    const p = probabilities[label];
    const r = el("div", label === top ? "bar-row top" : "bar-row");
    r.setAttribute("role", "listitem");
    r.dataset.label = label;
    r.dataset.value = String(p);
    r.append(el("span", "bar-name", label));
    const track = el("span", "bar-track");
    track.setAttribute("aria-hidden", "true");
    const fill = el("span", "bar-fill");
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    track.append(fill);
    r.append(track, el("span", "bar-value", percent(p)));
    return r;
  };
  if (labels.length <= MANY_LABELS) {
    container.append(...labels.map(row));
    return;
  }
  const sorted = [...labels].sort((a, b) => probabilities[b] - probabilities[a]);
  container.append(...sorted.slice(0, 10).map(row));
  const more = el("details", "more");
  more.append(el("summary", "", `All ${labels.length} labels`), ...sorted.slice(10).map(row));
  container.append(more);
}

function definitions(dl, entries) {
  for (const [key, value] of entries) {
    dl.append(el("dt", "", key.replaceAll("_", " ")));
    const text = typeof value === "number" ? String(Number(value.toPrecision(4))) : JSON.stringify(value);
    dl.append(el("dd", typeof value === "object" && value !== null ? "json" : "", text));
  }
}

function modalityCard(name, m, order) {
  const card = el("section", "modality");
  card.dataset.modality = name;
  const title = el("h3", "", name.charAt(0).toUpperCase() + name.slice(1));
  card.append(title);
  const n = Object.keys(m.probabilities || {}).length;
  const facts = el("dl", "facts");
  const fact = (term, value, cls) => {
    facts.append(el("dt", "", term));
    facts.append(el("dd", cls, value));
  };
  fact("label", m.label, "modality-label");
  fact("weight", percent(m.weight), "modality-weight");
  fact("entropy", `${m.entropy.toFixed(3)} nats (at most ${Math.log(n).toFixed(3)})`, "modality-entropy");
  // Only under a gated rule: the factor on this modality's weight (null otherwise, and not shown).
  if (typeof m.typicality === "number") {
    const note = m.typicality < 1 ? " (unlike the model's data: its weight was cut)" : " (like the model's data)";
    fact("typicality", `${percent(m.typicality)}${note}`, "modality-typicality");
  }
  // Where the model has a detector: is this input like the data the model was trained on?
  if (typeof m.in_distribution === "boolean") {
    const score = typeof m.ood_score === "number" ? ` (score ${m.ood_score.toFixed(3)}, threshold ${m.ood_threshold.toFixed(3)})` : "";
    const verdict = m.in_distribution
      ? "yes"
      : `no: unlike the model's data${m.fused === false ? ", left out of the answer" : ""}`;
    fact("in distribution", `${verdict}${score}`, m.in_distribution ? "modality-ood" : "modality-ood is-ood");
  }
  card.append(facts);
  const weight = el("span", "bar-track weight");
  weight.setAttribute("aria-hidden", "true");
  const fill = el("span", "bar-fill");
  fill.style.width = `${Math.max(0, Math.min(1, m.weight)) * 100}%`;
  weight.append(fill);
  card.append(weight);
  const extra = Object.entries(m).filter(([k]) => !KNOWN_MODALITY.has(k));
  if (extra.length) {
    const dl = el("dl", "facts extra-facts");
    definitions(dl, extra);
    card.append(dl);
  }
  const list = el("div", "bars");
  bars(list, m.probabilities, order, `${name} probabilities`);
  card.append(list);
  return card;
}

/** Renders an answer of /v1/predict; returns a one-line summary for the live status. */
export function renderResult(body, { labels, ms, requestId }) {
  hideError();
  $("fused-label").textContent = body.label;
  $("fused-confidence").textContent = percent(body.confidence);
  const badge = $("abstained");
  if (typeof body.abstained === "boolean") {
    badge.hidden = false;
    badge.className = body.abstained ? "badge abstained" : "badge answered";
    badge.textContent = !body.abstained
      ? "Answered: confident enough not to abstain"
      : body.abstain_reason === "out_of_distribution"
        ? "Abstained: nothing sent is like the data the model knows; the label is its best guess"
        : "Abstained: not confident enough to answer; the label is its best guess";
  } else {
    badge.hidden = true;
  }
  $("result").classList.toggle("is-abstained", body.abstained === true);
  bars($("fused-bars"), body.probabilities, labels, "fused probabilities");
  const mods = body.modalities || {};
  $("modalities").replaceChildren(...Object.entries(mods).map(([name, m]) => modalityCard(name, m, labels)));
  const extra = Object.entries(body).filter(([k]) => !KNOWN.has(k));
  const dl = $("extra");
  dl.replaceChildren();
  definitions(dl, extra);
  dl.hidden = extra.length === 0;
  const meta = [];
  if (body.model) {
    // the manifest's hash names exactly the files that answered (a version is never rewritten)
    const sha = body.model.manifest_sha256 ? ` (${String(body.model.manifest_sha256).slice(0, 12)})` : "";
    meta.push(`model ${body.model.name} v${body.model.version}${sha}`);
  }
  if (body.fusion) meta.push(`fusion: ${body.fusion}`);
  meta.push(`${Math.round(ms)} ms`);
  if (requestId) meta.push(`request id ${requestId}`);
  $("result-meta").textContent = meta.join(" · ");
  $("result-json").textContent = JSON.stringify(body, null, 2);
  $("result").hidden = false;
  const weights = Object.entries(mods).map(([name, m]) => `${name} weight ${percent(m.weight)}`);
  const abstained = body.abstained === true ? " (abstained)" : "";
  return `Result: ${body.label}, confidence ${percent(body.confidence)}${abstained}; ${weights.join(", ")}.`;
}
