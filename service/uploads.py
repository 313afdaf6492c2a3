"""Stream a multipart upload to temporary files, enforcing the size limit while it streams.

Starlette's form parser reads the whole body before a route sees it; here each chunk is
written as it arrives and the request is refused the moment the limit is passed, so a
1 GB upload costs at most the limit in bytes read. The limit counts every byte of the body:
the parts, their headers, and whatever a client puts before the first boundary or after
the last one.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import BadRequest, InvalidRequest, TooLarge, UnsupportedMedia

FILE_FIELDS = ("audio", "video")
FORM_FIELDS = ("use_video_audio", "min_confidence")
MAX_FORM_VALUE = 1024
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class Upload:
    files: dict[str, Path] = field(default_factory=dict)  # field -> temporary file
    sizes: dict[str, int] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    sink: IO[bytes] | None = None
    value: bytearray = field(default_factory=bytearray)


async def receive(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Parse the multipart body of `request` into `folder`; the caller removes the folder (`remove`)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMedia("send multipart/form-data with file fields 'audio' and/or 'video'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the upload is {int(declared)} bytes; the limit is {max_bytes}")

    upload = Upload()
    part = _Part()
    total = 0
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part.headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = disp.get(b"name", b"").decode("utf-8", "replace")
        if part.name in FILE_FIELDS:
            if part.name in upload.files:
                raise InvalidRequest(f"field {part.name!r} was sent twice")
            # Keep the client's file name, made safe: FFmpeg takes its extension as a hint, and
            # error messages then name the file the client sent.
            original = Path(disp.get(b"filename", b"").decode("utf-8", "replace")).name
            safe = SAFE_NAME.sub("_", original).strip("._")[:100] or "upload"
            path = folder / safe
            if path in upload.files.values():  # both fields carry one name: the second gets a folder of its own
                (folder / f".{part.name}").mkdir()  # no safe name starts with a dot, so this cannot clash
                path = folder / f".{part.name}" / safe
            upload.files[part.name] = path
            upload.sizes[part.name] = 0
            part.sink = path.open("wb")
        elif part.name not in FORM_FIELDS:
            known = ", ".join(FILE_FIELDS + FORM_FIELDS)
            raise InvalidRequest(f"unknown field {part.name!r}; the fields are {known}")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.sink is not None:
            part.sink.write(data[start:end])
            upload.sizes[part.name] += end - start
        else:
            part.value.extend(data[start:end])
            if len(part.value) > MAX_FORM_VALUE:
                raise InvalidRequest(f"field {part.name!r} is longer than {MAX_FORM_VALUE} bytes")

    def on_part_end() -> None:
        if part.sink is not None:
            part.sink.close()
            part.sink = None
        elif part.name:
            upload.form[part.name] = part.value.decode("utf-8", "replace")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"the upload passed the limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except (TooLarge, InvalidRequest):
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    finally:
        if part.sink is not None:
            part.sink.close()
    return upload


def remove(folder: Path) -> None:
    """Delete a request's folder. Its files lie flat in it (a nested folder only when two fields
    share a name), so one scan, an unlink per file and one rmdir do it: a third of what
    shutil.rmtree's descriptor walk costs, on every request's path."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        os.rmdir(folder)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
