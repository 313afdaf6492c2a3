// One recording at a time from the microphone or the camera, for the kinds' widgets (kinds/*.js).
import { Recording, deviceErrorMessage, recordingUnavailable } from "./media.js";

/**
 * Start recording for `kind`, or stop the recording running (starting this one unless it was the same).
 * `opts`: {device, constraints, types, most (seconds), button, live, timer, idleLabel, onStream(stream) -> cleanup,
 * done(blob, seconds)}.
 */
export async function toggle(page, kind, opts) {
  const running = page.state.recording;
  if (running) {
    const same = running.kind === kind;
    await stop(page);
    if (same) return;
  }
  const why = recordingUnavailable();
  if (why) {
    page.showError({ status: 0, title: `Cannot record the ${opts.device}`, message: why });
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(opts.constraints);
  } catch (err) {
    page.showError({ status: 0, title: `Cannot record the ${opts.device}`, message: deviceErrorMessage(err, opts.device) });
    return;
  }
  page.hideError();
  const rec = new Recording(stream, opts.types);
  const cleanup = opts.onStream(stream);
  const timer = setInterval(() => {
    opts.timer.textContent = `Recording ${rec.seconds.toFixed(1)} s of at most ${opts.most} s`;
    if (rec.seconds >= opts.most) stop(page);
  }, 100);
  page.state.recording = { kind, rec, timer, cleanup, opts };
  opts.button.textContent = "Stop recording";
  opts.button.setAttribute("aria-pressed", "true");
  opts.live.hidden = false;
  rec.start();
  page.setStatus(`Recording the ${opts.device}…`);
  page.updateControls();
}

/** Stop the recording running, if any, and hand its file to its widget. */
export async function stop(page) {
  const r = page.state.recording;
  if (!r) return;
  page.state.recording = null;
  clearInterval(r.timer);
  r.cleanup();
  const took = r.rec.seconds;
  let blob;
  try {
    blob = await r.rec.stop();
  } catch (err) {
    page.showError({ status: 0, title: `The ${r.opts.device} recording failed`, message: String(err.message || err) });
    blob = null;
  }
  r.opts.button.textContent = r.opts.idleLabel;
  r.opts.button.setAttribute("aria-pressed", "false");
  r.opts.live.hidden = true;
  if (blob && blob.size) r.opts.done(blob, took);
  else if (blob) {
    page.showError({ status: 0, title: `The ${r.opts.device} recording is empty`, message: "Nothing was recorded; try again." });
  }
  page.updateControls();
}
