"""Receive a multipart upload: small files in memory, larger ones spooled to disk within a budget.

Starlette's form parser reads the whole body before a route sees it; here each chunk is
handled as it arrives and the request is refused the moment a bound is passed:

- the size limit counts every byte of the body (parts, their headers, and whatever a client puts
  before the first boundary or after the last one): 413;
- a file part stays in memory up to `memory_bytes` and never touches the disk; past that it moves
  to a file, and the bytes on disk, all requests together, stay within the spool budget (the
  declared Content-Length is reserved before the body is read, a chunked body as it arrives): 503
  with Retry-After, since the budget frees itself as requests finish;
- the body must arrive within `body_seconds`, with no pause longer than `idle_seconds`: 408;
- a disk that is full, out of inodes or unwritable is the server's fault: 503, with no path in
  the message, and the replica reports not ready (`Storage.problem`) until it recovers.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from common.modalities import borrowing, names
from service.errors import BadRequest, InvalidRequest, Overloaded, RequestTimeout, StorageUnavailable, TooLarge, UnsupportedMedia

log = logging.getLogger(__name__)
FILE_FIELDS = names()  # one per modality kind: a file part (text: a file part or a plain value)
FORM_FIELDS = (*borrowing(), "min_confidence", "version")
MAX_FORM_VALUE = 1024
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
INSTANCE_PREFIX = "server-"
PROBLEM_TTL = 1.0  # seconds a storage check is reused: /readyz and every scrape of mla_ready ask for it


class Storage:
    """The upload folder of one server: its own subfolder of MLA_TMP_DIR, the spool budget, its health.

    Each server works in `MLA_TMP_DIR/server-<pid>-<random>/`, holding an exclusive lock on the
    `.lock` file inside for its lifetime. At start it removes every sibling whose lock nobody
    holds: what a server killed mid-upload (SIGKILL, OOM, power) left behind. Servers sharing one
    MLA_TMP_DIR never remove each other's live uploads.
    """

    def __init__(self, root: Path, spool_bytes: int, min_free_bytes: int) -> None:
        self.root, self.spool_bytes, self.min_free_bytes = root, spool_bytes, min_free_bytes
        self.spooled = 0  # bytes reserved on disk now, all requests together
        self.folder: Path | None = None
        self._lock: int | None = None  # the descriptor holding this server's lock
        self._problem: tuple[float, str | None] = (-PROBLEM_TTL, None)

    def open(self) -> None:
        """Create this server's folder and clean up after servers that died; never raises (see `problem`)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.clean_leftovers()
            self.folder = Path(tempfile.mkdtemp(prefix=f"{INSTANCE_PREFIX}{os.getpid()}-", dir=self.root))
            # Read-only: a lock needs no write access, and a file open for writing would keep an
            # operator from remounting the disk read-only.
            self._lock = os.open(self.folder / ".lock", os.O_RDONLY | os.O_CREAT, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            log.error("the upload folder cannot be prepared: %s", exc)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def clean_leftovers(self) -> list[Path]:
        """Remove the folders of servers that are gone (their lock is free); return them."""
        removed = []
        for entry in self.root.glob(f"{INSTANCE_PREFIX}*"):
            try:
                lock = os.open(entry / ".lock", os.O_RDONLY)
            except OSError as exc:  # a folder without a lock file: a server died between creating both
                if exc.errno == errno.ENOENT and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                continue
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its server lives
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            except BlockingIOError:
                continue
            finally:
                os.close(lock)
        if removed:
            log.warning("removed %d upload folders left by servers that died", len(removed))
        return removed

    def problem(self) -> str | None:
        """Why uploads cannot be stored now (None: they can). Checked at most once a second."""
        now = time.monotonic()
        checked, problem = self._problem
        if now - checked < PROBLEM_TTL:
            return problem
        problem = self._check()
        self._problem = (now, problem)
        return problem

    def _check(self) -> str | None:
        if self.folder is None:
            self.open()
            if self.folder is None:
                return "the upload folder cannot be created"
        try:
            st = os.statvfs(self.folder)
            if st.f_bavail * st.f_frsize < self.min_free_bytes:
                return "the upload folder's disk is full"
            if st.f_files and st.f_favail == 0:
                return "the upload folder's disk has no free inodes"
            fd, name = tempfile.mkstemp(dir=self.folder, prefix="probe-")
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            return f"the upload folder cannot be written ({errno.errorcode.get(exc.errno or 0, 'error')})"
        return None

    def failed(self, exc: OSError) -> StorageUnavailable:
        """The 503 for a storage fault met while receiving; the next readiness check looks again."""
        self._problem = (-PROBLEM_TTL, None)
        log.error("cannot store an upload: %s", exc)
        code = errno.errorcode.get(exc.errno or 0, "error")
        return StorageUnavailable(f"the server cannot store uploads right now ({code}); retry shortly")

    def take(self, n: int) -> bool:
        if self.spooled + n > self.spool_bytes:
            return False
        self.spooled += n
        return True

    def give(self, n: int) -> None:
        self.spooled -= n


class Budget:
    """Bytes held at once by all requests together, against a limit: `take` refuses past it (the caller answers 503)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


@dataclass
class Upload:
    """One request's files (field -> a path on disk, or (file name, bytes) in memory) and form values."""

    files: dict[str, Path | tuple[str, bytes]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None  # created on the first file that spills to disk
    reserved: int = 0  # bytes of the spool budget this request holds


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str = ""
    is_file: bool = False
    sink: IO[bytes] | None = None
    value: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class Bounds:
    max_bytes: int  # the whole body
    memory_bytes: int  # one file kept in memory up to this
    body_seconds: float
    idle_seconds: float


def _safe_name(original: str) -> str:
    # Keep the client's file name, made safe: FFmpeg takes its extension as a hint, and error
    # messages then name the file the client sent.
    return SAFE_NAME.sub("_", Path(original).name).strip("._")[:100] or "upload"


async def receive(request: Request, storage: Storage, bounds: Bounds, upload: Upload) -> None:
    """Parse the multipart body of `request` into `upload`; the caller ends with `release(upload, storage)`,
    whatever happens: what was spooled and reserved before a failure is in `upload`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMedia("send multipart/form-data with a field per modality (" + ", ".join(FILE_FIELDS) + ")")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    declared_text = request.headers.get("content-length")
    declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else None
    if declared is not None and declared > bounds.max_bytes:
        raise TooLarge(f"the upload is {declared} bytes; the limit is {bounds.max_bytes}")

    # A body that may spill is given its disk room before a byte is read; a chunked one, as it goes.
    if declared is not None and declared > bounds.memory_bytes:
        if not storage.take(declared):
            raise Overloaded("uploads on disk are at the server's limit; retry shortly")
        upload.reserved = declared
    part = _Part()
    on_disk = 0
    header_field = bytearray()
    header_value = bytearray()

    def spill(p: _Part) -> None:
        """Move a file part that outgrew memory to a file in this request's folder."""
        if upload.folder is None:
            assert storage.folder is not None
            upload.folder = Path(tempfile.mkdtemp(prefix="req-", dir=storage.folder))
        path = upload.folder / p.filename
        if path in upload.files.values():  # both fields carry one name: the second gets a folder of its own
            (upload.folder / f".{p.name}").mkdir()  # no safe name starts with a dot, so this cannot clash
            path = upload.folder / f".{p.name}" / p.filename
        upload.files[p.name] = path
        p.sink = path.open("wb")
        write(p, p.value)
        p.value = bytearray()

    def write(p: _Part, data: bytes | bytearray) -> None:
        nonlocal on_disk
        on_disk += len(data)
        if on_disk > upload.reserved:  # chunked, or a client that sent more than it declared
            more = max(len(data), 1 << 20)
            if not storage.take(more):
                raise Overloaded("uploads on disk are at the server's limit; retry shortly")
            upload.reserved += more
        assert p.sink is not None
        p.sink.write(data)

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
            if part.name in upload.sizes:
                raise InvalidRequest(f"field {part.name!r} was sent twice")
            part.is_file = True
            part.filename = _safe_name(disp.get(b"filename", b"").decode("utf-8", "replace"))
            upload.sizes[part.name] = 0
        elif part.name not in FORM_FIELDS:
            known = ", ".join(FILE_FIELDS + FORM_FIELDS)
            raise InvalidRequest(f"unknown field {part.name!r}; the fields are {known}")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.is_file:
            upload.sizes[part.name] += end - start
            if part.sink is not None:
                write(part, data[start:end])
                return
            part.value.extend(data[start:end])
            if len(part.value) > bounds.memory_bytes:
                spill(part)
        else:
            part.value.extend(data[start:end])
            if len(part.value) > MAX_FORM_VALUE:
                raise InvalidRequest(f"field {part.name!r} is longer than {MAX_FORM_VALUE} bytes")

    def on_part_end() -> None:
        if part.sink is not None:
            part.sink.close()
            part.sink = None
        elif part.is_file:
            upload.files[part.name] = (part.filename, bytes(part.value))
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bounds.body_seconds
    total = 0
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        chunks = request.stream().__aiter__()
        while True:
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(min(bounds.idle_seconds, max(left, 0.0))):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if left <= bounds.idle_seconds:
                    raise RequestTimeout(f"the body did not arrive within {bounds.body_seconds:g} s") from None
                raise RequestTimeout(f"the body paused for more than {bounds.idle_seconds:g} s") from None
            total += len(chunk)
            if total > bounds.max_bytes:
                raise TooLarge(f"the upload passed the limit of {bounds.max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if part.is_file and part.sink is None and part.name not in upload.files:
            # A body that ends inside a file part (no closing boundary): its bytes so far are the
            # file, as they are for a part already spooled to disk, and as before uploads were kept in memory.
            upload.files[part.name] = (part.filename, bytes(part.value))
    except (TooLarge, InvalidRequest, Overloaded, RequestTimeout):
        raise
    except OSError as exc:  # the disk: full, out of inodes, unwritable, gone
        raise storage.failed(exc) from None
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before the body was complete") from None
    except Exception as exc:  # python-multipart's parse errors
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    finally:
        if part.sink is not None:
            part.sink.close()


async def receive_bytes(request: Request, budget: Budget, bounds: Bounds, upload: Upload) -> bytes:
    """A whole body in memory (the Open Inference Protocol's), within the same bounds as an upload: its size, its
    time, its pauses. Its bytes count against `budget` (MLA_MAX_BODY_MEMORY_BYTES) until `release(upload, budget)`,
    so the bodies held at once stay bounded as uploads on disk are."""
    declared_text = request.headers.get("content-length")
    declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else None
    if declared is not None and declared > bounds.max_bytes:
        raise TooLarge(f"the body is {declared} bytes; the limit is {bounds.max_bytes}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bounds.body_seconds
    body = bytearray()
    try:
        chunks = request.stream().__aiter__()
        while True:
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(min(bounds.idle_seconds, max(left, 0.0))):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if left <= bounds.idle_seconds:
                    raise RequestTimeout(f"the body did not arrive within {bounds.body_seconds:g} s") from None
                raise RequestTimeout(f"the body paused for more than {bounds.idle_seconds:g} s") from None
            if len(body) + len(chunk) > bounds.max_bytes:
                raise TooLarge(f"the body passed the limit of {bounds.max_bytes} bytes")
            if len(body) + len(chunk) > upload.reserved:
                # a declared length is taken whole at the first chunk; a chunked body, as it arrives
                more = max(len(body) + len(chunk), declared or 0) - upload.reserved
                if not budget.take(more):
                    raise Overloaded("request bodies held in memory are at the server's limit; retry shortly")
                upload.reserved += more
            body += chunk
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before the body was complete") from None
    return bytes(body)


def release(upload: Upload, storage: Storage | Budget) -> None:
    """Delete a request's files and give back its share of the budget it took from (the spool's, or memory's)."""
    if upload.folder is not None:
        remove(upload.folder)
    storage.give(upload.reserved)
    upload.reserved = 0


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
