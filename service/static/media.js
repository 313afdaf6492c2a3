// Recording (MediaRecorder) and the drawing pad that turns a digit into a short clip.
// Everything here runs in the browser; the service decodes what MediaRecorder writes (WebM) with PyAV.

export const AUDIO_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];
export const VIDEO_TYPES = ["video/webm;codecs=vp8,opus", "video/webm;codecs=vp9,opus", "video/webm", "video/mp4"];
export const CLIP_TYPES = ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm", "video/mp4"];

/** Why this browser cannot record here, or null when it can. */
export function recordingUnavailable() {
  if (!window.isSecureContext) {
    return "Recording needs a secure page (https, or http on localhost): upload a file instead.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return "This browser cannot open a microphone or camera.";
  if (!window.MediaRecorder) return "This browser cannot record (no MediaRecorder).";
  return null;
}

/** A getUserMedia failure in words a person can act on. */
export function deviceErrorMessage(err, device) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `Permission to use the ${device} was refused: allow it in the browser's site settings, or upload a file instead.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${device} was found.`;
    case "NotReadableError":
      return `The ${device} could not be opened: another program may be using it.`;
    default:
      return `The ${device} could not be opened: ${err && err.message ? err.message : err}`;
  }
}

function pickType(candidates) {
  return candidates.find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

/** The file name extension for what a MediaRecorder wrote. */
export function extensionOf(type) {
  if (type.includes("ogg")) return "ogg";
  if (type.includes("mp4")) return "mp4";
  return "webm";
}

/** Records a MediaStream until stop(); stop() resolves to the Blob and releases the stream's tracks. */
export class Recording {
  constructor(stream, candidates, options = {}) {
    this.stream = stream;
    const type = pickType(candidates);
    this.recorder = new MediaRecorder(stream, type ? { ...options, mimeType: type } : options);
    this.chunks = [];
    this.startedAt = 0;
    this.recorder.ondataavailable = (e) => {
      if (e.data && e.data.size) this.chunks.push(e.data);
    };
    this.done = new Promise((resolve, reject) => {
      this.recorder.onstop = () => {
        const blob = new Blob(this.chunks, { type: this.recorder.mimeType || type || "application/octet-stream" });
        this.stream.getTracks().forEach((t) => t.stop());
        resolve(blob);
      };
      this.recorder.onerror = (e) => {
        this.stream.getTracks().forEach((t) => t.stop());
        reject(e.error || new Error("the recorder failed"));
      };
    });
  }

  start() {
    this.startedAt = performance.now();
    this.recorder.start(250); // chunks every 250 ms: nothing is lost if the tab is closed mid-way
  }

  get seconds() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  stop() {
    if (this.recorder.state !== "inactive") this.recorder.stop();
    return this.done;
  }
}

/** Drives a level meter from a live audio stream; returns a function that stops it. */
export function levelMeter(stream, fill) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return () => {};
  const ctx = new Ctx();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let running = true;
  const tick = () => {
    if (!running) return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    fill.style.width = `${Math.min(100, Math.round(rms * 300))}%`;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  return () => {
    running = false;
    ctx.close();
  };
}

/** The drawing pad: white strokes on black, like MNIST, from mouse, touch or pen. */
export class DrawPad {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.drawn = false;
    this.clear();
    let last = null;
    const point = (e) => {
      const r = canvas.getBoundingClientRect();
      return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
    };
    canvas.addEventListener("pointerdown", (e) => {
      canvas.setPointerCapture(e.pointerId);
      last = point(e);
      this.stroke(last, last);
      e.preventDefault();
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const p = point(e);
      this.stroke(last, p);
      last = p;
      e.preventDefault();
    });
    const end = () => {
      last = null;
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.drawn = false;
  }

  stroke(a, b) {
    const c = this.ctx;
    c.strokeStyle = "#fff";
    c.lineWidth = this.canvas.width * 0.08; // MNIST strokes are about 2 px of 28
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    c.moveTo(a[0], a[1]);
    c.lineTo(b[0], b[1]);
    c.stroke();
    this.drawn = true;
  }

  /** Draws the digit for someone who cannot draw with a pointer (keyboard, screen reader). */
  stamp(digit) {
    this.clear();
    const c = this.ctx;
    c.fillStyle = "#fff";
    c.font = `bold ${Math.round(this.canvas.height * 0.7)}px sans-serif`;
    c.textAlign = "center";
    c.textBaseline = "middle";
    c.fillText(digit, this.canvas.width / 2, this.canvas.height / 2);
    this.drawn = true;
  }

  /** The bounding box of what was drawn, or null when the pad is blank. */
  bounds() {
    const { width, height } = this.canvas;
    const px = this.ctx.getImageData(0, 0, width, height).data;
    let x0 = width;
    let y0 = height;
    let x1 = -1;
    let y1 = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (px[(y * width + x) * 4] > 32) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
  }
}

/**
 * Records `seconds` of the drawn digit drifting a few pixels across `target`, as the clips the
 * model learnt from: MNIST puts a digit in a 20 px box of a 28 px frame, and the AV-digits clips
 * show that frame at 56 px in a 64 px picture, moving up to 4 px.
 */
export function recordDigitClip(pad, target, seconds = 1, fps = 15) {
  const box = pad.bounds();
  if (!box) return Promise.reject(new Error("Draw a digit on the pad first."));
  if (!window.MediaRecorder || !target.captureStream) {
    return Promise.reject(new Error("This browser cannot record a canvas (no MediaRecorder or captureStream)."));
  }
  const size = target.width;
  const scale = (size * (20 / 28) * (56 / 64)) / Math.max(box.w, box.h);
  const w = box.w * scale;
  const h = box.h * scale;
  const drift = size * (4 / 64);
  const ctx = target.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  const paint = (progress) => {
    const shift = -drift / 2 + drift * progress;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    ctx.drawImage(pad.canvas, box.x, box.y, box.w, box.h, (size - w) / 2 + shift, (size - h) / 2 + shift, w, h);
  };
  paint(0);
  // A generous bit rate for a tiny picture: the strokes stay sharp from the first frame (about 10 kB a second).
  const recording = new Recording(target.captureStream(fps), CLIP_TYPES, { videoBitsPerSecond: 1_000_000 });
  recording.start();
  const t0 = performance.now();
  // A timer, not requestAnimationFrame: the clip still completes if the tab is in the background.
  const timer = setInterval(() => {
    const progress = Math.min(1, (performance.now() - t0) / (seconds * 1000));
    paint(progress);
    if (progress >= 1) {
      clearInterval(timer);
      setTimeout(() => recording.stop(), 2000 / fps); // let the stream take the last frame
    }
  }, 1000 / fps);
  return recording.done;
}
