"""Response shapes, for validation of what we send and for the OpenAPI page."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ModelRef(BaseModel):
    name: str
    version: str


class ModalityResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    entropy: float  # nats
    weight: float  # this modality's share of the fused prediction


class PredictResponse(BaseModel):
    model: ModelRef
    label: str
    confidence: float
    probabilities: dict[str, float]
    modalities: dict[str, ModalityResult]  # only the modalities that were sent
    fusion: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable media, or a file that is not of its field's modality",
        401: "missing or wrong API key",
        404: "no such model",
        413: "too large or too long",
        415: "unsupported container or request type",
        422: "no modality, an unknown field, or an invalid field value",
        503: "not ready or overloaded (see Retry-After)",
    }.items()
}

METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}

_AUDIO = {"type": "string", "format": "binary", "description": "an audio file (wav, flac, mp3, ...)"}
_VIDEO = {"type": "string", "format": "binary", "description": "a video file (mp4, mkv, flv, mpg, ...)"}
# What the service accepts, as a schema: at least one file; use_video_audio=true only with a
# video and no audio file (it makes the video's audio track the audio input).
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "audio": _AUDIO,
                        "video": _VIDEO,
                        "use_video_audio": {
                            "type": "boolean",
                            "description": "with only a video: use its audio track as the audio modality",
                        },
                    },
                    "additionalProperties": False,
                    "anyOf": [
                        {"required": ["audio"], "properties": {"use_video_audio": {"const": False}}},
                        {"required": ["video"], "properties": {"use_video_audio": {"const": False}}},
                        {"required": ["video"], "properties": {"use_video_audio": {"const": True}, "audio": False}},
                    ],
                }
            }
        },
    }
}
