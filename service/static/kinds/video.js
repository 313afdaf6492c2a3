// The video kind's widget: a video file, a recording of the camera (with its sound, if asked), or a digit drawn on a
// pad and turned into a one-second clip.
import { DrawPad, VIDEO_TYPES, extensionOf, recordDigitClip } from "../media.js";
import { toggle } from "../recorder.js";
import { clipCard, clipControls } from "./clip.js";

const MARKUP = `
  <legend>Video</legend>
  <p class="hint" id="video-hint">A clip of a handwritten digit, a face, anything the model was trained on.</p>
  <div class="actions">
    <input type="file" id="video-file" class="file-input" aria-describedby="formats">
    <label for="video-file" class="button">Choose a video file</label>
    <button type="button" id="cam-button" class="button" aria-pressed="false">Record the camera</button>
    <button type="button" id="draw-button" class="button" aria-expanded="false" aria-controls="draw-panel">Draw a digit</button>
  </div>
  <label class="check"><input type="checkbox" id="cam-sound"> Record sound with the camera</label>
  <div id="cam-live" class="live" hidden>
    <video id="cam-preview" muted playsinline aria-label="Camera preview"></video>
    <p><span class="dot" aria-hidden="true"></span> <span id="cam-timer">Recording…</span></p>
  </div>
  <div id="draw-panel" class="draw" hidden>
    <canvas id="pad" width="280" height="280" role="img"
            aria-label="Drawing area: draw one digit with the mouse, a finger or a pen"></canvas>
    <div class="draw-tools">
      <p class="hint">Draw one large digit, then make a one-second clip of it.</p>
      <label for="stamp">Or type a digit to draw it for you</label>
      <input id="stamp" type="text" inputmode="numeric" maxlength="1" pattern="[0-9]" autocomplete="off">
      <div class="actions">
        <button type="button" id="pad-clear" class="button secondary">Clear</button>
        <button type="button" id="pad-use" class="button">Make the clip</button>
      </div>
    </div>
    <canvas id="clip-canvas" class="offstage" width="128" height="128" aria-hidden="true"></canvas>
  </div>`;

export function mount(page, kind, info, entry) {
  const card = clipCard(kind, MARKUP, "video controls muted playsinline");
  const q = (id) => card.querySelector(`#${id}`);
  q("video-file").accept = document.body.dataset.accept || info.accept;
  if (entry && entry.frames) {
    q("video-hint").textContent =
      `A clip of a handwritten digit, or whatever the model learnt: it sees ${entry.frames} frames spread over the clip.`;
  }
  const clip = clipControls(page, kind, card);
  q("cam-button").addEventListener("click", () => {
    const limits = (page.state.model && page.state.model.limits) || {};
    const withSound = q("cam-sound").checked;
    toggle(page, kind, {
      device: "camera",
      constraints: { video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: withSound },
      types: VIDEO_TYPES,
      most: Math.min(limits.max_video_seconds || 60, 10),
      button: q("cam-button"),
      live: q("cam-live"),
      timer: q("cam-timer"),
      idleLabel: "Record the camera",
      onStream: (stream) => {
        q("cam-preview").srcObject = stream;
        q("cam-preview").play().catch(() => {});
        return () => {
          q("cam-preview").srcObject = null;
        };
      },
      done: (blob, took) => {
        page.setClip(kind, blob, `camera.${extensionOf(blob.type)}`, `camera, ${took.toFixed(1)} s`);
        if (withSound) page.borrowFrom(kind); // recorded with sound: its sound is the other input, if none is there
      },
    });
  });
  // the drawing pad
  const pad = new DrawPad(q("pad"));
  q("draw-button").addEventListener("click", () => {
    const panel = q("draw-panel");
    panel.hidden = !panel.hidden;
    q("draw-button").setAttribute("aria-expanded", String(!panel.hidden));
  });
  q("pad-clear").addEventListener("click", () => pad.clear());
  q("stamp").addEventListener("input", (e) => {
    const digit = e.target.value.replace(/[^0-9]/g, "");
    e.target.value = digit;
    if (digit) pad.stamp(digit);
  });
  q("pad-use").addEventListener("click", async () => {
    const button = q("pad-use");
    button.disabled = true;
    page.setStatus("Making a one-second clip of the drawing…");
    try {
      const blob = await recordDigitClip(pad, q("clip-canvas"));
      page.setClip(kind, blob, `drawing.${extensionOf(blob.type)}`, "drawing, 1 s");
    } catch (err) {
      page.showError({ status: 0, title: "Cannot make a clip of the drawing", message: String(err.message || err) });
    } finally {
      button.disabled = false;
      page.updateControls();
    }
  });
  return {
    card,
    show: clip.show,
    hide: clip.hide,
  };
}
