"""Video: a clip (mp4, mkv, flv, mpg, ...) -> N uint8 RGB frames sampled uniformly over it, resized.

Inside the graph: the frames normalised by a fixed mean and standard deviation, each through the
trunk, their features averaged over time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from common.media import MEDIA_FORMATS, load_video
from common.media_types import Limits, VideoSpec
from common.modalities.base import EntryBase, Kind, Settings, Source


class VideoEntry(EntryBase):
    kind: Literal["video"] = "video"
    frames: int
    height: int
    width: int
    pixel_format: Literal["rgb24"] = "rgb24"
    sampling: Literal["uniform-centre"] = "uniform-centre"  # frame i of N: the centre of the i-th of N equal segments


class Video(Kind):
    name = "video"
    entry = VideoEntry
    input_name = "frames"
    accept = "video/*"
    description = "a video file (mp4, mkv, flv, mpg, ...)"
    formats = MEDIA_FORMATS
    encoder_class = "training.models.encoders:VideoEncoder"
    augmentation_class = "training.models.augment:FrameAffine"  # one random turn, scale, shear and shift per clip
    widget = "video"  # a file, the camera, or a digit drawn on a pad
    ood_k = 10

    def defaults(self, encoder: str) -> Settings:
        if encoder == "resnet18":  # the paper's CREMA-D setting: 3 frames at 224 px, ImageNet statistics
            return {"frames": 3, "size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        return {"frames": 4, "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def check(self, settings: Mapping[str, Any]) -> None:
        if settings["frames"] < 1 or settings["size"] < 1:
            raise ValueError(
                f"video needs at least one frame of at least one pixel, got {settings['frames']} x {settings['size']}"
            )

    def spec(self, settings: Mapping[str, Any]) -> VideoSpec:
        size = int(settings["size"])
        return VideoSpec(frames=int(settings["frames"]), height=size, width=size)

    def input(self, settings: Mapping[str, Any]) -> tuple[Literal["float32", "uint8"], tuple[int, ...]]:
        size = int(settings["size"])
        return "uint8", (int(settings["frames"]), size, size, 3)

    def entry_fields(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        size = int(settings["size"])
        return {"frames": int(settings["frames"]), "height": size, "width": size}

    def settings_from_entry(self, entry: Any) -> Settings:
        if entry.height != entry.width:
            raise ValueError(f"frames of {entry.height}x{entry.width}; the data sets decode square frames")
        return {"frames": entry.frames, "size": entry.height}

    def decode(self, source: Source, spec: VideoSpec, limits: Limits, formats: frozenset[str] | None = None) -> np.ndarray:
        # One FFmpeg thread: decodes run one per worker process, one worker per core, so more would only contend.
        return load_video(source, spec, limits, formats, threads=1)

    def limits(self, server: Any) -> Limits:
        return Limits(
            max_seconds=server.max_video_seconds,
            max_pixels=server.max_video_pixels,
            max_frames=server.max_video_frames,
            min_frames=2,
            min_sample_rate=server.min_audio_rate,
            max_sample_rate=server.max_audio_rate,
            max_channels=server.max_audio_channels,
            max_streams=server.max_streams,
        )

    def legacy_settings(self, flat: Mapping[str, Any]) -> Settings | None:
        if "video_frames" not in flat:
            return None
        return {
            "frames": flat["video_frames"],
            "size": flat["video_size"],
            "mean": list(flat["video_mean"]),
            "std": list(flat["video_std"]),
        }


KIND = Video()
