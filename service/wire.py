"""The decode workers' wire format: a fixed prefix, a JSON header, then raw bytes.

A message is `!IQ` (header length, payload length), the header (a JSON object), then the payload.

- server -> worker: {"op": "job"} with a pickle of (function, args) as payload, or {"op": "stop"}.
  The worker trusts the server: it runs what it is told.
- worker -> server: {"status": "ready", "pid": N}; {"status": "ok", "dtype", "shape", "seconds"} (and
  "inference_seconds" where the job ran a graph) with the array's bytes as payload; {"status": "media",
  "kind", "message"}; {"status": "memory", "message"}; {"status": "bug", "message"}.

The server never unpickles what a worker says: a worker runs FFmpeg on untrusted bytes and may
be subverted by them, so its reply is parsed as data (JSON, a numeric dtype, a shape whose size
matches the bytes, a bounded length), and the worst a subverted worker can send is a wrong array
or a malformed reply, which retires it.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
from typing import Any

import numpy as np

from common.media_types import (
    DecodeError,
    MediaError,
    MediaLimitError,
    MissingStreamError,
    StillImageError,
    UnsupportedFormatError,
)

PREFIX = struct.Struct("!IQ")
ONE_SEND = 64 * 1024  # a message up to this many payload bytes goes out in one send: its copy costs less than a wake-up
MAX_HEADER = 64 * 1024  # a traceback or an error message; never an array
NUMERIC_KINDS = frozenset("biuf")  # bool, signed and unsigned integers, floats: no objects, no strings
MEDIA_ERRORS: dict[str, type[MediaError]] = {
    cls.__name__: cls
    for cls in (MediaError, DecodeError, MissingStreamError, MediaLimitError, UnsupportedFormatError, StillImageError)
}


class ProtocolError(Exception):
    """A worker's message that does not follow this format."""


def encode(header: dict[str, Any], payload_size: int = 0) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(raw), payload_size) + raw


def parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    return header


def array_layout(header: dict[str, Any], max_bytes: int) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """The dtype, shape and byte count an "ok" header announces, checked before any byte is read."""
    try:
        dtype = np.dtype(str(header["dtype"]))
        shape = tuple(int(d) for d in header["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"no valid dtype and shape: {exc}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or any(d < 0 for d in shape) or len(shape) > 8:
        raise ProtocolError(f"not a numeric array: {dtype} {shape}")
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64)) if shape else dtype.itemsize
    if size > max_bytes:
        raise ProtocolError(f"an array of {size} bytes is past the {max_bytes} a worker may send")
    return dtype, shape, size


def media_error(header: dict[str, Any]) -> MediaError:
    cls = MEDIA_ERRORS.get(str(header.get("kind")))
    if cls is None:
        raise ProtocolError(f"unknown media error {header.get('kind')!r}")
    return cls(str(header.get("message", ""))[:2000])


# --- the worker's side: a blocking socket -------------------------------------------------------------
def send(sock: socket.socket, header: dict[str, Any], payload: np.ndarray | bytes = b"") -> None:
    data = payload.reshape(-1).view(np.uint8).data if isinstance(payload, np.ndarray) else memoryview(payload)
    head = encode(header, data.nbytes)
    if data.nbytes <= ONE_SEND:  # one send, so the reader wakes once for the whole message
        sock.sendall(head + data)
        return
    sock.sendall(head)
    sock.sendall(data)


def send_array(sock: socket.socket, array: np.ndarray, seconds: float, inference_seconds: float | None = None) -> None:
    array = np.ascontiguousarray(array)
    header: dict[str, Any] = {"status": "ok", "dtype": array.dtype.str, "shape": list(array.shape), "seconds": seconds}
    if inference_seconds is not None:
        header["inference_seconds"] = inference_seconds
    send(sock, header, array)


def send_job(sock: socket.socket, fn: Any, args: tuple[Any, ...]) -> None:
    send(sock, {"op": "job"}, pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))


def _read_exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the other end closed")
        got += k
    return buf


def receive_blocking(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """The next message (the worker reads the server's jobs this way)."""
    header_size, payload_size = PREFIX.unpack(_read_exactly(sock, PREFIX.size))
    header = parse_header(bytes(_read_exactly(sock, header_size)))
    return header, bytes(_read_exactly(sock, payload_size))
