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
        413: "too large or too long",
        415: "unsupported container or request type",
        422: "no modality, an unknown field, or an invalid field value",
        503: "not ready or overloaded (see Retry-After)",
    }.items()
}

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "audio": {"type": "string", "format": "binary", "description": "an audio file (wav, flac, mp3, ...)"},
                        "video": {"type": "string", "format": "binary", "description": "a video file (mp4, mkv, flv, mpg, ...)"},
                        "use_video_audio": {
                            "type": "boolean",
                            "description": "with only a video: use its audio track as the audio modality",
                        },
                    },
                }
            }
        },
    }
}
