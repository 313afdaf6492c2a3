"""The Open Inference Protocol's codec (service/protocol.py), without a server: every body is a parse or a 4xx."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import protocol
from service.errors import ServiceError

AUDIO = {"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["a"]}
MODALITIES = {"audio": ("waveform", "FP32", (8,)), "video": ("frames", "UINT8", (2, 3, 3))}


def test_bytes_elements_round_trip_and_torn_prefixes_are_refused() -> None:
    files = [b"", b"RIFF\x00\x01", bytes(range(256)) * 3]
    blob = protocol.encode_bytes(files)
    assert protocol._bytes_elements(blob, "audio") == files
    with pytest.raises(ServiceError, match="cut short"):
        protocol._bytes_elements(blob + b"\x01\x00", "audio")
    with pytest.raises(ServiceError, match="says 9 bytes"):
        protocol._bytes_elements(struct.pack("<I", 9) + b"abc", "audio")


def test_binary_and_json_tensors_give_the_same_array() -> None:
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    v = np.random.default_rng(1).integers(0, 256, size=(2, 2, 3, 3)).astype(np.uint8)
    head = {
        "inputs": [
            {"name": "audio/waveform", "shape": [2, 8], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
            {"name": "video/frames", "shape": [2, 2, 3, 3], "datatype": "UINT8", "data": v.tolist()},  # nested lists
        ]
    }
    parsed = protocol.parse(json.dumps(head).encode(), x.tobytes(), MODALITIES, max_rows=4)
    assert parsed.rows == 2
    np.testing.assert_array_equal(parsed.tensors["audio"], x)
    np.testing.assert_array_equal(parsed.tensors["video"], v)
    assert parsed.tensors["video"].dtype == np.uint8


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ([{"name": "audio/waveform", "shape": [1, 8], "datatype": "FP32", "data": [float("nan")] + [0.0] * 7}], "NaN"),
        ([{"name": "video/frames", "shape": [1, 2, 3, 3], "datatype": "UINT8", "data": [256] + [0] * 17}], "0..255"),
        ([{"name": "video/frames", "shape": [1, 2, 3, 3], "datatype": "UINT8", "data": [0.5] + [0] * 17}], "0..255"),
        ([{"name": "audio/waveform", "shape": [1, 8], "datatype": "FP32", "data": [True] * 8}], "numbers"),
        ([{"name": "audio/other", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}], "audio/waveform"),
        ([AUDIO, AUDIO], "twice"),
        ([AUDIO, {"name": "video", "shape": [2], "datatype": "BYTES", "data": ["b", "c"]}], "same number of rows"),
        ([{"name": "audio", "shape": [5], "datatype": "BYTES", "data": ["a"] * 5}], "limit is 4"),
        ([{"name": "audio", "shape": [0], "datatype": "BYTES", "data": []}], "no rows"),
        ([{"name": "audio", "shape": [1], "datatype": "BYTES"}], "no data"),
        ([{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [1]}], "strings"),
        ([{**AUDIO, "parameters": {"content_type": "hex"}}], "content_type"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_take_is_refused_with_a_reason(inputs: list[dict], says: str) -> None:
    with pytest.raises(ServiceError, match=says) as caught:
        protocol.parse(json.dumps({"inputs": inputs}).encode(), b"", MODALITIES, max_rows=4)
    assert 400 <= caught.value.status < 500


def test_binary_data_is_accounted_for_to_the_byte() -> None:
    head = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}
    element = protocol.encode_bytes([b"a"])  # 5 bytes
    assert protocol.parse(json.dumps(head).encode(), element, MODALITIES, 4).files == {"audio": [b"a"]}
    with pytest.raises(ServiceError, match="no input declared"):
        protocol.parse(json.dumps(head).encode(), element + b"x", MODALITIES, 4)
    with pytest.raises(ServiceError, match="left in the body"):
        protocol.parse(json.dumps(head).encode(), element[:4], MODALITIES, 4)
    assert protocol.split_body(b'{"a":1}xyz', "7") == (b'{"a":1}', b"xyz")
    with pytest.raises(ServiceError):
        protocol.split_body(b"{}", "-1")


def test_outputs_in_json_and_binary_carry_the_same_values() -> None:
    produced: dict[str, tuple[str, np.ndarray | list[bytes]]] = {
        "label": ("BYTES", [b"7", b"1"]),
        "confidence": ("FP32", np.array([0.9, 0.4], np.float32)),
        "abstained": ("BOOL", np.array([False, True])),
    }
    text, length = protocol.encode(produced, None, False, {"model_name": "m", "id": "1"})
    assert length is None
    outputs = {o["name"]: o for o in json.loads(text)["outputs"]}
    assert outputs["label"]["data"] == ["7", "1"]
    assert outputs["abstained"]["data"] == [False, True]
    asked = [protocol.OutputRequest(name="confidence", parameters={"binary_data": True}), protocol.OutputRequest(name="label")]
    body, length = protocol.encode(produced, asked, False, {"model_name": "m", "id": "1"})
    assert length is not None
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["confidence", "label"]
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4"), np.array([0.9, 0.4], np.float32))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["audio", "video", "audio/waveform", "video/frames", "x", ""]),
        "shape": st.lists(st.integers(-2, 20), max_size=5),
        "datatype": st.sampled_from(["BYTES", "FP32", "UINT8", "INT64", "BOOL"]),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "content_type"]), st.integers(-5, 64) | st.text(max_size=8), max_size=2
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    inputs=st.lists(tensors, max_size=3),
    extra=st.dictionaries(st.sampled_from(["id", "parameters", "outputs", "model_name"]), json_values, max_size=2),
    binary=st.binary(max_size=64),
)
def test_any_body_is_a_parse_or_a_4xx(inputs: list[dict], extra: dict, binary: bytes) -> None:
    """Property: whatever the JSON and the binary part, parsing ends in a request or a 4xx, never another exception."""
    head = json.dumps({"inputs": inputs, **extra}).encode()
    try:
        parsed = protocol.parse(head, binary, MODALITIES, max_rows=4)
    except ServiceError as exc:
        status = exc.status
    else:
        status = 200
        assert 1 <= parsed.rows <= 4
        for m, t in parsed.tensors.items():
            assert t.shape == (parsed.rows, *MODALITIES[m][2])
        assert all(len(files) == parsed.rows for files in parsed.files.values())
    assert status == 200 or 400 <= status < 500
