"""The work every peer server does, built only from common/: decode with common.media, run the exported ONNX graphs,
answer with common.answer.decide. No torch and no service/ import, so it runs in the peers' own venv (.venv/peers).

It does what the service does per request (service/model.py), so that no server is faster by doing less:
- decode: load_audio / load_video with the manifest's AudioSpec / VideoSpec, the service's accepted formats and its
  default limits (service/settings.py), the upload held in memory, video with one FFmpeg thread;
- infer: one ONNX Runtime session per modality with the service's options (all graph optimisations, no spinning
  thread pool), both outputs (logits and the features its out-of-distribution detector scores) on a batch;
- answer: the service's answer (service/model.py `postprocess`), the same fields from the same common code, less
  its metrics.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from common.answer import answer_body, decide
from common.manifest import Manifest, load_detectors, load_manifest, manifest_sha256
from common.media import MEDIA_FORMATS, AudioSpec, Limits, VideoSpec, load_audio, load_video
from common.modalities.audio import AudioEntry
from common.modalities.video import VideoEntry

# service/settings.py's defaults, as the service builds its Limits from them (service/model.py `limits`)
SANE = {"min_sample_rate": 1_000, "max_sample_rate": 384_000, "max_channels": 32, "max_streams": 32}
AUDIO_LIMITS = Limits(max_seconds=60.0, **SANE)
VIDEO_LIMITS = Limits(max_seconds=60.0, max_pixels=1920 * 1080, max_frames=3600, min_frames=2, **SANE)


class Upload(io.BytesIO):
    """An upload kept in memory with the client's file name (FFmpeg takes its extension as a hint)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


class Pipeline:
    """One model version's decode, inference and answer, for one peer worker process."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self.manifest: Manifest = load_manifest(model_dir)
        self.manifest_sha256 = manifest_sha256(model_dir)
        self.detectors = load_detectors(model_dir, self.manifest)
        self.params = self.manifest.fusion.params()
        self.sessions: dict[str, Any] = {}
        self.outputs: dict[str, list[str]] = {}
        import onnxruntime as ort

        for m, entry in self.manifest.modalities.items():
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            self.sessions[m] = ort.InferenceSession(str(model_dir / entry.file), opts, providers=["CPUExecutionProvider"])
            features = [entry.features.name] if m in self.detectors and entry.features else []
            self.outputs[m] = [entry.output.name, *features]

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest.modalities)

    def decode(self, modality: str, name: str, data: bytes) -> np.ndarray:
        """One upload as its graph's input row (common.media raises MediaError on a bad file)."""
        entry = self.manifest.modalities[modality]
        if isinstance(entry, AudioEntry):
            return load_audio(Upload(data, name), AudioSpec(entry.sample_rate, entry.clip_samples), AUDIO_LIMITS, MEDIA_FORMATS)
        assert isinstance(entry, VideoEntry)
        spec = VideoSpec(entry.frames, entry.height, entry.width)
        return load_video(Upload(data, name), spec, VIDEO_LIMITS, MEDIA_FORMATS, threads=1)

    def infer(self, modality: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits [n, classes] and, where the modality has a detector, features [n, dims] for a batch of rows."""
        session = self.sessions[modality]
        out = session.run(self.outputs[modality], {session.get_inputs()[0].name: batch})
        return out[0], (out[1] if len(out) > 1 else None)

    def infer_rows(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, tuple[np.ndarray, np.ndarray | None]]]:
        """Each request's decoded inputs -> each one's (logits, features) per modality, one session call per modality."""
        results: list[dict[str, tuple[np.ndarray, np.ndarray | None]]] = [{} for _ in rows]
        for m in self.modalities:
            which = [i for i, r in enumerate(rows) if m in r]
            if not which:
                continue
            logits, features = self.infer(m, np.stack([rows[i][m] for i in which]))
            for j, i in enumerate(which):
                results[i][m] = (logits[j], None if features is None else features[j])
        return results

    def answer(self, outputs: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
        """One request's answer from its modalities' (logits, features): the service's own (common.answer)."""
        fusion, params = self.manifest.fusion, self.params
        for m, (z, _) in outputs.items():
            if not np.isfinite(z).all():
                raise ValueError(f"{m}: the model's output is not finite for this input")
        logits = {m: z for m, (z, _) in outputs.items()}
        features = {m: f for m, (_, f) in outputs.items() if f is not None}
        a = decide(
            params,
            fusion.abstention.min_confidence,
            self.detectors,
            {m: z.astype(np.float64)[None] for m, z in logits.items()},
            {m: f.astype(np.float64)[None] for m, f in features.items()},
        )
        return answer_body(self.manifest, self.manifest_sha256, params, self.detectors, a)
