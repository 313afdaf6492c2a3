// The audio kind's widget: an audio file, or a recording of the microphone.
import { AUDIO_TYPES, extensionOf, levelMeter } from "../media.js";
import { toggle } from "../recorder.js";
import { clipCard, clipControls } from "./clip.js";

const MARKUP = `
  <legend>Audio</legend>
  <p class="hint" id="audio-hint">A spoken word or any sound.</p>
  <div class="actions">
    <input type="file" id="audio-file" class="file-input" aria-describedby="formats">
    <label for="audio-file" class="button">Choose an audio file</label>
    <button type="button" id="mic-button" class="button" aria-pressed="false">Record the microphone</button>
  </div>
  <div id="mic-live" class="live" hidden>
    <span class="dot" aria-hidden="true"></span>
    <span id="mic-timer">Recording…</span>
    <span class="meter" aria-hidden="true"><span id="mic-level" class="meter-fill"></span></span>
  </div>`;

export function mount(page, kind, info, entry) {
  const card = clipCard(kind, MARKUP, "audio controls");
  const q = (id) => card.querySelector(`#${id}`);
  const seconds = (x) => `${Number(x.toFixed(2))} s`;
  q("audio-file").accept = document.body.dataset.accept || info.accept;
  if (entry && entry.clip_seconds) {
    q("audio-hint").textContent = `A spoken word or any sound. The model hears the first ${seconds(entry.clip_seconds)}: start right away.`;
  }
  const clip = clipControls(page, kind, card);
  q("mic-button").addEventListener("click", () => {
    const limits = (page.state.model && page.state.model.limits) || {};
    // Enough for a word past the model's clip, never past the service's limit.
    const most = Math.min(limits.max_audio_seconds || 60, Math.max(3, Math.ceil(entry ? entry.clip_seconds : 1) + 2));
    toggle(page, kind, {
      device: "microphone",
      constraints: { audio: { echoCancellation: false, noiseSuppression: false } }, // the model hears the sound as it is
      types: AUDIO_TYPES,
      most,
      button: q("mic-button"),
      live: q("mic-live"),
      timer: q("mic-timer"),
      idleLabel: "Record the microphone",
      onStream: (stream) => levelMeter(stream, q("mic-level")),
      done: (blob, took) => page.setClip(kind, blob, `microphone.${extensionOf(blob.type)}`, `microphone, ${took.toFixed(1)} s`),
    });
  });
  return {
    card,
    show: clip.show,
    hide: clip.hide,
  };
}
