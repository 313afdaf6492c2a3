"""The Open Inference Protocol (KServe v2) on the wire: request parsing, the binary tensor extension, response encoding.

Pure functions of bytes and numpy, no I/O: service/routes_v2.py calls them.

A request's inputs, each for any subset of the model's modalities:

- `<modality>`, datatype BYTES, shape [N]: N media files, raw bytes (decoded by the service as /v1/predict's uploads
  are). In the binary extension the bytes go as they are; in JSON an element is a string, whose UTF-8 bytes are the
  file, or, with the input's parameter `content_type: "base64"` (MLServer's convention), base64 text of the file.
- `<modality>/<graph input>` (the names /v2/models/{name} lists), FP32 or UINT8, shape [N, ...]: tensors already
  decoded, exactly what that modality's ONNX graph takes; no decoding.

N is the same for every input. Outputs are named tensors with N rows (see OUTPUTS); `answer` carries each row's whole
/v1/predict answer as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BadRequest, InvalidRequest

HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header (HTTP headers are case-blind)
# protocol datatype -> numpy dtype (little-endian on the wire, as the binary extension says)
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
MANIFEST_TYPES = {"float32": "FP32", "uint8": "UINT8"}
# Python objects per byte of a JSON number list, at most (measured: "300," becomes a 36-byte int and an 8-byte list
# slot, 10x; "0.5," 8x; "1," 4x, small ints being shared), and the float64 array made of it (2x at most): 12.
JSON_PARSE_FACTOR = 12


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any = None


class OutputRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The protocol's request body (its JSON part, in the binary extension). Fields the protocol does not name are let
    pass, as its schema lets them (KServe's client sends `model_name`); an input's or output's are refused."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(None, max_length=200)
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn] = Field(min_length=1, max_length=16)
    outputs: list[OutputRequest] | None = Field(None, max_length=64)


@dataclass
class Parsed:
    request: InferenceRequest
    files: dict[str, list[bytes]] = field(default_factory=dict)  # modality -> N media files
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [N, ...] decoded inputs
    rows: int = 0


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body (the binary extension), or the whole body as JSON."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count, not {header_length[:40]!r}")
    n = int(header_length)
    if n > len(body):
        raise BadRequest(f"{HEADER_LENGTH} says {n} bytes of JSON, but the body has {len(body)}")
    return body[:n], body[n:]


def _count(shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"a tensor's shape has a negative dimension: {shape}")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _flat(data: Any) -> list[Any]:
    """A JSON tensor's data, row-major: nested lists flattened (the protocol allows both)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, list):
            if len(stack) > 16:
                raise InvalidRequest("a tensor's data is nested deeper than 16 lists")
            stack.append(iter(item))
        else:
            out.append(item)
    return out


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """The binary extension's BYTES: each element a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequest(f"{name}: a BYTES element's length prefix is cut short")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise BadRequest(f"{name}: a BYTES element says {n} bytes, {len(raw) - at} are left")
        out.append(raw[at : at + n])
        at += n
    return out


def encode_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def parse(head: bytes, binary: bytes, modalities: dict[str, tuple[str, str, tuple[int, ...]]], max_rows: int) -> Parsed:
    """Check and unpack a request for a model whose modalities are `modalities`: modality -> (graph input name,
    protocol datatype, row shape). 400/422 on anything the protocol or the model does not allow."""
    try:
        request = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidRequest(f"not an inference request: {problems}") from None
    parsed = Parsed(request)
    at = 0
    rows: dict[str, int] = {}
    for t in request.inputs:
        params = t.parameters or {}
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(f"{t.name}: binary_data_size must be a byte count")
            if t.data is not None:
                raise InvalidRequest(f"{t.name}: data and binary_data_size both given")
            if at + size > len(binary):
                raise BadRequest(f"{t.name}: {size} bytes of binary data declared, {len(binary) - at} left in the body")
            raw: bytes | None = binary[at : at + size]
            at += size
        else:
            if t.data is None:
                raise InvalidRequest(f"{t.name}: no data (neither data nor binary_data_size)")
            raw = None
        modality, _, graph_input = t.name.partition("/")
        if modality not in modalities:
            raise InvalidRequest(f"no input named {t.name!r}; this model takes {', '.join(sorted(modalities))}")
        if modality in parsed.files or modality in parsed.tensors:
            raise InvalidRequest(f"{modality} is given twice")
        expected_name, expected_type, row_shape = modalities[modality]
        if not graph_input:  # media files
            if t.datatype != "BYTES":
                raise InvalidRequest(f"{t.name}: media files are BYTES, not {t.datatype}")
            if len(t.shape) != 1:
                raise InvalidRequest(f"{t.name}: media files have shape [N], not {t.shape}")
            if raw is not None:
                elements = _bytes_elements(raw, t.name)
            else:
                elements = _json_bytes(t.data, params.get("content_type"), t.name)
            if len(elements) != t.shape[0]:
                raise InvalidRequest(f"{t.name}: shape says {t.shape[0]} files, the data holds {len(elements)}")
            parsed.files[modality] = elements
            rows[t.name] = len(elements)
        else:
            if graph_input != expected_name:
                raise InvalidRequest(f"no input named {t.name!r}; {modality}'s tensor input is {modality}/{expected_name}")
            if t.datatype != expected_type:
                raise InvalidRequest(f"{t.name} is {expected_type}, not {t.datatype}")
            if len(t.shape) != 1 + len(row_shape) or tuple(t.shape[1:]) != row_shape:
                raise InvalidRequest(f"{t.name} has shape [N, {', '.join(map(str, row_shape))}], not {t.shape}")
            n = _count(t.shape)
            dtype = DTYPES[expected_type]
            if raw is not None:
                if len(raw) != n * dtype.itemsize:
                    raise InvalidRequest(
                        f"{t.name}: shape {t.shape} of {t.datatype} is {n * dtype.itemsize} bytes, not {len(raw)}"
                    )
                array = np.frombuffer(raw, dtype).reshape(t.shape)
            else:
                values = _flat(t.data)
                if len(values) != n:
                    raise InvalidRequest(f"{t.name}: shape {t.shape} holds {n} values, the data {len(values)}")
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                    raise InvalidRequest(f"{t.name}: {t.datatype} data must be numbers")
                try:
                    array = np.asarray(values, dtype=np.float64).reshape(t.shape)
                except (OverflowError, ValueError):
                    raise InvalidRequest(f"{t.name}: the data are not {t.datatype} values") from None
                if expected_type == "UINT8" and (np.any(array < 0) or np.any(array > 255) or np.any(array != np.round(array))):
                    raise InvalidRequest(f"{t.name}: UINT8 data must be whole numbers 0..255")
                array = array.astype(dtype)
            if not np.isfinite(array).all():
                raise InvalidRequest(f"{t.name}: the tensor holds a NaN or an infinity")
            parsed.tensors[modality] = np.ascontiguousarray(array.astype(dtype.newbyteorder("=")))
            rows[t.name] = t.shape[0]
    if at != len(binary):
        raise BadRequest(f"{len(binary) - at} bytes of binary data follow that no input declared")
    if len(set(rows.values())) > 1:
        raise InvalidRequest(f"every input needs the same number of rows: {rows}")
    parsed.rows = next(iter(rows.values()))
    if parsed.rows == 0:
        raise InvalidRequest("the inputs hold no rows")
    if parsed.rows > max_rows:
        raise InvalidRequest(f"{parsed.rows} rows in one request; the limit is {max_rows}")
    return parsed


def _json_bytes(data: Any, content_type: Any, name: str) -> list[bytes]:
    values = _flat(data)
    if not all(isinstance(v, str) for v in values):
        raise InvalidRequest(f"{name}: BYTES data in JSON are strings")
    if content_type in (None, "str"):
        return [v.encode("utf-8") for v in values]
    if content_type == "base64":
        try:
            return [base64.b64decode(v, validate=True) for v in values]
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{name}: not base64 text") from None
    raise InvalidRequest(f"{name}: content_type must be 'str' or 'base64', not {str(content_type)[:40]!r}")


# --- outputs -----------------------------------------------------------------------------------------------------------


def outputs(labels: list[str], modalities: list[str], detectors: set[str]) -> list[dict[str, Any]]:
    """What /v2/models/{name} lists as outputs: name, datatype and shape (-1: the request's rows)."""
    k = len(labels)
    out = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
        {"name": "abstained", "datatype": "BOOL", "shape": [-1]},
        {"name": "abstain_reason", "datatype": "BYTES", "shape": [-1]},
        {"name": "min_confidence", "datatype": "FP32", "shape": [-1]},
        {"name": "answer", "datatype": "BYTES", "shape": [-1]},
    ]
    for m in modalities:
        out += [
            {"name": f"{m}/probabilities", "datatype": "FP32", "shape": [-1, k]},
            {"name": f"{m}/weight", "datatype": "FP32", "shape": [-1]},
            {"name": f"{m}/fused", "datatype": "BOOL", "shape": [-1]},
        ]
        if m in detectors:
            out += [
                {"name": f"{m}/ood_score", "datatype": "FP32", "shape": [-1]},
                {"name": f"{m}/in_distribution", "datatype": "BOOL", "shape": [-1]},
            ]
    return out


def tensors(answers: list[dict[str, Any]], labels: list[str]) -> dict[str, tuple[str, np.ndarray | list[bytes]]]:
    """The output tensors of N answers (each /v1/predict's JSON answer): name -> (datatype, values)."""

    def f32(values: list[Any]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    out: dict[str, tuple[str, np.ndarray | list[bytes]]] = {
        "label": ("BYTES", [a["label"].encode() for a in answers]),
        "confidence": ("FP32", f32([a["confidence"] for a in answers])),
        "probabilities": ("FP32", f32([[a["probabilities"][lab] for lab in labels] for a in answers])),
        "abstained": ("BOOL", np.asarray([a["abstained"] for a in answers], dtype=bool)),
        "abstain_reason": ("BYTES", [(a["abstain_reason"] or "").encode() for a in answers]),
        "min_confidence": ("FP32", f32([a["min_confidence"] for a in answers])),
        "answer": ("BYTES", [json.dumps(a, separators=(",", ":")).encode() for a in answers]),
    }
    for m in answers[0]["modalities"]:
        detail = [a["modalities"][m] for a in answers]
        out[f"{m}/probabilities"] = ("FP32", f32([[d["probabilities"][lab] for lab in labels] for d in detail]))
        out[f"{m}/weight"] = ("FP32", f32([d["weight"] for d in detail]))
        out[f"{m}/fused"] = ("BOOL", np.asarray([d["fused"] for d in detail], dtype=bool))
        if detail[0]["ood_score"] is not None:
            out[f"{m}/ood_score"] = ("FP32", f32([d["ood_score"] for d in detail]))
            out[f"{m}/in_distribution"] = ("BOOL", np.asarray([d["in_distribution"] for d in detail], dtype=bool))
    return out


def encode(
    produced: dict[str, tuple[str, np.ndarray | list[bytes]]],
    requested: list[OutputRequest] | None,
    binary_default: bool,
    head: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when any output travels as binary data (else None)."""
    if requested is None:
        wanted = [(name, binary_default) for name in produced]
    else:
        wanted = []
        for o in requested:
            if o.name not in produced:
                raise InvalidRequest(f"no output named {o.name!r} for these inputs; there are {', '.join(produced)}")
            flag = (o.parameters or {}).get("binary_data", binary_default)
            if not isinstance(flag, bool):
                raise InvalidRequest(f"{o.name}: binary_data must be true or false")
            wanted.append((o.name, flag))
    listed, blobs = [], []
    for name, as_binary in wanted:
        datatype, values = produced[name]
        shape = [len(values)] if isinstance(values, list) else list(values.shape)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if as_binary:
            blob = encode_bytes(values) if isinstance(values, list) else np.ascontiguousarray(values, DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(values, list):
            entry["data"] = [v.decode("utf-8") for v in values]
        else:
            entry["data"] = values.reshape(-1).tolist()
        listed.append(entry)
    text = json.dumps({**head, "outputs": listed}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
