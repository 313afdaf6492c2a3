"""Response shapes, for validation of what we send and for the OpenAPI page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from common.modalities import KINDS, Kind, borrowing, kind


class ModelRef(BaseModel):
    name: str
    version: str
    manifest_sha256: str = Field(
        description="sha256 of the version's manifest.json, which holds every other file's hash: it names exactly "
        "the files that produced this answer (a version is never rewritten; a changed model is a new version)"
    )


class ModalityResult(BaseModel):
    label: str = Field(description="this modality's own most probable label")
    probabilities: dict[str, float] = Field(
        description="this modality's calibrated class probabilities: softmax(logits / temperature)"
    )
    entropy: float = Field(description="entropy of those probabilities, in nats (0: certain; ln(classes): uniform)")
    weight: float = Field(
        description="this modality's share of the fused prediction (the weights of the sent modalities sum to 1)"
    )
    temperature: float = Field(description="the calibration temperature applied to this modality's logits (fitted on validation)")
    typicality: float | None = Field(
        default=None,
        description="under the gated_loglinear rule: the factor in (0, 1] on this modality's weight, 1 while its logits "
        "lie as near the class means as validation's did, smaller the farther out they are (an input unlike the model's "
        "data, such as speech drowned in noise); null under rules without a gate",
    )
    ood_score: float | None = Field(
        default=None,
        description="the out-of-distribution score of this input, higher meaning more like the training data. Under the "
        "manifest's `knn` detector it lies in [-2, 0]: minus the distance of its normalised features to the k-th nearest "
        "of the training inputs'. Under `knn+probe` it is the lower of two scores, each in standard deviations of the "
        "validation split's: that distance, and a linear probe's log-odds that the input is not an auxiliary outlier "
        "(speech that is not a digit, say). Null where the model has no detector",
    )
    ood_threshold: float | None = Field(
        default=None,
        description="the score at or above which an input is in distribution: the one that keeps 95% of a new "
        "speaker's inputs as the manifest's cross-fitted folds estimate it, or of the validation split's where the model "
        "was exported without folds (the manifest's `ood` section); null where the model has no detector",
    )
    in_distribution: bool | None = Field(
        default=None,
        description="false when this input is unlike anything the model was trained on (ood_score below ood_threshold): "
        "it is then left out of the fusion; null where the model has no detector",
    )
    fused: bool = Field(
        default=True,
        description="whether the fused answer used this modality (false: judged out of distribution beside one that was not)",
    )


class ConfidenceMapUsed(BaseModel):
    slope: float = Field(description="on the logit of the top label's probability (below 1: sure answers come down)")
    offset: float = Field(description="added to it (above 0: unsure answers go up)")
    lowest: float = Field(
        description="the lowest top confidence the map was fitted on; below it the map runs straight to 1/classes, "
        "so an answer that says nothing keeps the confidence of a guess"
    )


class PredictResponse(BaseModel):
    model: ModelRef
    label: str = Field(description="the fused prediction: the most probable label")
    confidence: float = Field(
        description="calibrated probability that `label` is right: on held-out data, answers given with confidence c "
        "are right about a fraction c of the time"
    )
    abstained: bool = Field(
        description="true when `confidence` is below `min_confidence` or no modality sent was in distribution "
        "(`abstain_reason` says which): the label is still given, but the model recommends not acting on it; a "
        "min_confidence of 1 never answers"
    )
    abstain_reason: str | None = Field(
        default=None,
        description="why the answer is abstained: `out_of_distribution` (no modality sent was in distribution) or "
        "`low_confidence` (the confidence is below min_confidence); null when it is not",
    )
    fused_modalities: list[str] = Field(
        default_factory=list,
        description="the modalities the fused answer was computed from: those sent that were in distribution, or all "
        "of them when none was (the answer is then abstained)",
    )
    min_confidence: float = Field(
        description="the threshold used: the request's `min_confidence`, or the model's own, chosen on validation so that "
        "at most 5% of the answers above it were wrong"
    )
    probabilities: dict[str, float] = Field(description="the calibrated fused distribution over the labels")
    prediction_set: list[str] | None = Field(
        default=None,
        description="the labels that hold the true one at least 95% of the time on inputs like those the model was "
        "calibrated on (split conformal, per set of modalities fused): one label when the answer is sure, several when "
        "it is torn; null where the model has no conformal quantile or no input sent was in distribution",
    )
    modalities: dict[str, ModalityResult] = Field(description="one entry per modality sent, and only those")
    fusion: str = Field(
        description="the fusion rule (gated_loglinear: a weighted product of experts whose weights shrink for atypical "
        "modalities, blended with the equal-weight mixture by `mixture_share`; loglinear: the product without the gate; "
        "entropy: per-sample weights softmax(-entropy); logit_sum: joint training's own; see the model's manifest)"
    )
    mixture_share: float = Field(
        default=0.0,
        description="under a product rule, s in [0, 1): log q = (1 - s) log product + s log(mean of the sent modalities' "
        "probabilities), so that a modality nearly sure a label is wrong cannot veto it alone (0: the product alone; "
        "always 0 under the other rules)",
    )
    fused_temperature: float = Field(
        description="the temperature applied to the fused log-probabilities for this set of modalities (1: none)"
    )
    confidence_map: ConfidenceMapUsed | None = Field(
        default=None,
        description="where validation kept one for this set of modalities: the map applied last to the top label's "
        "probability, confidence = sigmoid(slope * logit(c) + offset) from `lowest` up, the other labels rescaled to "
        "keep their proportions (it never changes the label); null: none",
    )


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


def _input_schema(k: Kind) -> dict[str, Any]:
    if k.field == "value":
        return {"type": "string", "description": k.description}
    return {"type": "string", "format": "binary", "description": k.description}


def predict_body(modalities: Sequence[str]) -> dict[str, Any]:
    """What /v1/predict accepts for a model of these modalities, as a schema: a field per input (common.modalities), at
    least one of them; a borrowing flag (use_video_audio) only with its source and without its target. The served
    model's (service.main sets it on /openapi.json); before one is loaded, every kind's."""
    flags = {f: (t, s) for f, (t, s) in borrowing().items() if t in modalities and s in modalities}
    off = {flag: {"const": False} for flag in flags}
    ways: list[dict[str, Any]] = [{"required": [m], "properties": off} for m in modalities]
    for flag, (target, source) in flags.items():
        ways.append({"required": [source], "properties": {**off, flag: {"const": True}, target: False}})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            **{m: _input_schema(kind(m)) for m in modalities},
                            **{
                                flag: {
                                    "type": "boolean",
                                    "description": f"with {source} and no {target}: take the {target} from the {source} file",
                                }
                                for flag, (target, source) in flags.items()
                            },
                            "min_confidence": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 1,
                                "description": "abstain below this calibrated confidence instead of the model's own threshold",
                            },
                            "version": {
                                "type": "string",
                                "description": "the model version to answer (default: the served one)",
                            },
                        },
                        "additionalProperties": False,
                        "anyOf": ways,
                    }
                }
            },
        }
    }


PREDICT_BODY = predict_body(list(KINDS))


class ErrorResponseV2(BaseModel):
    """The Open Inference Protocol's error: a message string, with the service's code beside it."""

    error: str
    code: str


ERROR_RESPONSES_V2: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponseV2, "description": text}
    for status, text in {
        400: "undecodable media, a file not of its input's modality, or a malformed binary body",
        401: "missing or wrong API key (admin key on the repository routes)",
        403: "the repository routes are off (MLA_ADMIN_KEY unset)",
        404: "no such model or version",
        413: "too large or too long",
        415: "unsupported container",
        422: "not an inference request this model takes (names, datatypes, shapes, data)",
        503: "not ready or overloaded (see Retry-After)",
    }.items()
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "a modality (media files, BYTES) or <modality>/<graph input> (decoded)"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BYTES", "FP32", "UINT8"]},
        "parameters": {
            "type": "object",
            "properties": {
                "binary_data_size": {"type": "integer", "minimum": 0},
                "content_type": {"type": "string", "enum": ["str", "base64"]},
            },
            "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
        },
        "data": {
            "type": "array",
            "description": "the values, row-major (nested lists are flattened); base64 text for files with content_type",
            "items": {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "array"}]},
        },
    },
    "additionalProperties": False,
}
_SCALAR = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
# The protocol's inference request (its JSON form; the binary extension sends this first, then the tensors' bytes,
# with Inference-Header-Content-Length giving the JSON's length).
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                **{flag: {"type": "boolean"} for flag in borrowing()},
                                "binary_data_output": {"type": "boolean"},
                            },
                            "additionalProperties": _SCALAR,
                        },
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {
                                        "type": "object",
                                        "properties": {"binary_data": {"type": "boolean"}},
                                        "additionalProperties": _SCALAR,
                                    },
                                },
                            },
                        },
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "the outputs as named tensors (JSON, or JSON then binary data with Inference-Header-Content-Length)",
            "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {}},
        }
    },
}
