"""Audio: a recording (wav, flac, mp3, the audio track of a video, ...) -> mono float32 waveform at the model's rate.

Inside the graph: the level raised to the training clips' peak, then a log-mel spectrogram
(training.models.frontend), normalised by a BatchNorm the data set fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from common.media import MEDIA_FORMATS, load_audio
from common.media_types import AudioSpec, Limits
from common.modalities.base import EntryBase, Kind, Settings, Source


class AudioEntry(EntryBase):
    kind: Literal["audio"] = "audio"
    sample_rate: int  # Hz the waveform must be resampled to
    clip_samples: int  # waveform length: pad with zeros at the end or crop from the start
    clip_seconds: float
    channels: Literal["mono"] = "mono"


class Audio(Kind):
    name = "audio"
    entry = AudioEntry
    input_name = "waveform"
    accept = "audio/*,video/*"
    description = "an audio file (wav, flac, mp3, ...)"
    formats = MEDIA_FORMATS
    encoder_class = "training.models.encoders:AudioEncoder"
    widget = "audio"  # a file or the microphone
    augmentation_class = "training.models.augment:SpecAugment"  # the mel axis warped, bands and frames masked
    ood_k = 20
    borrow = ("video", "use_video_audio")  # the audio track of the video file sent
    older_augment_option = "audio_augment"

    def defaults(self, encoder: str) -> Settings:
        # the paper's CREMA-D setting for resnet18: 4 s clips, 128 mels
        long = encoder == "resnet18"
        return {
            "sample_rate": 16_000,  # Hz the waveform is resampled to
            "clip_samples": 4 * 16_000 if long else 16_000,  # waveform length after padding/cropping
            "n_fft": 400,  # window length (25 ms at 16 kHz)
            "hop_length": 160,  # 10 ms hop
            "n_mels": 128 if long else 64,
            # a clip whose peak |sample| is under this is raised to it before the log-mel, louder ones pass
            # unchanged (training.models.frontend.RaiseLevel); None: fed at its own level (checkpoints from
            # before 2026-12-05)
            "peak": 0.9,
            # each clip's mean log-mel per band subtracted, weighted by frame power (training.models.frontend.LogMel);
            # off for every model trained before 2026-12-07
            "cmn": False,
        }

    def check(self, settings: Mapping[str, Any]) -> None:
        peak = settings["peak"]
        if peak is not None and not 0 < peak <= 1:
            raise ValueError(f"audio peak must be in (0, 1] or None, got {peak}")
        if not isinstance(settings["cmn"], bool):
            raise ValueError(f"audio cmn must be true or false, got {settings['cmn']!r}")
        if settings["clip_samples"] < settings["n_fft"]:
            raise ValueError(
                f"an audio clip of {settings['clip_samples']} samples is shorter than one window ({settings['n_fft']})"
            )

    def spec(self, settings: Mapping[str, Any]) -> AudioSpec:
        return AudioSpec(sample_rate=int(settings["sample_rate"]), samples=int(settings["clip_samples"]))

    def input(self, settings: Mapping[str, Any]) -> tuple[Literal["float32", "uint8"], tuple[int, ...]]:
        return "float32", (int(settings["clip_samples"]),)

    def entry_fields(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        rate, samples = int(settings["sample_rate"]), int(settings["clip_samples"])
        return {"sample_rate": rate, "clip_samples": samples, "clip_seconds": samples / rate}

    def settings_from_entry(self, entry: Any) -> Settings:
        return {"sample_rate": entry.sample_rate, "clip_samples": entry.clip_samples}

    def decode(self, source: Source, spec: AudioSpec, limits: Limits, formats: frozenset[str] | None = None) -> np.ndarray:
        return load_audio(source, spec, limits, formats)

    def limits(self, server: Any) -> Limits:
        return Limits(
            max_seconds=server.max_audio_seconds,
            min_sample_rate=server.min_audio_rate,
            max_sample_rate=server.max_audio_rate,
            max_channels=server.max_audio_channels,
            max_streams=server.max_streams,
        )

    def legacy_settings(self, flat: Mapping[str, Any]) -> Settings | None:
        if "sample_rate" not in flat:
            return None
        keys = ("sample_rate", "clip_samples", "n_fft", "hop_length", "n_mels")
        # saved before the level step existed: those models never normalised the level
        return {**{k: flat[k] for k in keys if k in flat}, "peak": flat.get("audio_peak"), "cmn": False}


KIND = Audio()
