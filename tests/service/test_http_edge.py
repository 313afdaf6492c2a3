"""The HTTP edge (service/http_edge.py) against a real `mla serve`, over raw sockets: header bytes and
fields over their limits get 431 before the server buffers them, headers that never finish get 408,
and connections that never send a request cannot take every file descriptor."""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service import http_edge
from service.http_edge import fd_reserve
from service.settings import Settings
from tests.servers import Server, start_server, stop_server

MAX_HEADER_BYTES = 64 * 1024  # the defaults, restated: these servers run with them
MAX_HEADERS = 100
READ = 256 * 1024  # the most the event loop reads at once (uvloop and asyncio)
DEADLINE = 120.0  # a bound on every wait below, not a timing under test


@pytest.fixture(scope="module")
def edge(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tiny_repo, tmp_path_factory.mktemp("edge"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def impatient(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Headers must arrive within 1 s."""
    srv = start_server(tiny_repo, tmp_path_factory.mktemp("impatient"), MLA_HEADER_TIMEOUT_SECONDS="1")
    yield srv
    stop_server(srv)


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=DEADLINE)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer: status, headers, body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """Reads to the server's close (a reset counts); the socket's timeout (DEADLINE) bounds the wait."""
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return True


def refused(sock: socket.socket, status: int, code: str, *words: str) -> None:
    got, headers, body = read_answer(sock)
    assert got == status, body
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code
    for w in words:
        assert w in error["message"]
    assert closed_by_server(sock)


def rss(server: Server) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def peak_while(sample: Callable[[], int], action: Callable[[], None]) -> int:
    """The highest value of `sample` seen while `action` runs (sampled every 5 ms) and just after."""
    highest = [sample()]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            highest[0] = max(highest[0], sample())
            done.wait(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        action()
    finally:
        done.set()
        t.join()
    return max(highest[0], sample())


def kernel_buffers() -> int:
    """The most loopback TCP can hold between the client's send() and the server's read: the
    largest send buffer (tcp_wmem) plus the largest receive buffer (tcp_rmem)."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
    return total


@pytest.mark.parametrize(
    ("start", "block"),
    [
        # 1 KiB fields: the byte limit binds before the count
        (b"", b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"a" * 1000) for i in range(1024))),
        # one endless value, which httptools buffers itself until it ends
        (b"X-Endless: ", b"a" * (1 << 20)),
    ],
    ids=["many-fields", "one-endless-value"],
)
def test_300_mib_of_headers_get_431_early_and_the_server_does_not_grow(edge: Server, start: bytes, block: bytes) -> None:
    """A client streams 300 MiB of headers, looking for an answer between sends. It must get 431
    having sent no more than the server reads before it answers (MLA_MAX_HEADER_BYTES plus two
    reads) plus what the kernel buffers between them hold, and the server's RSS must stay within
    32 MiB of what it was: what it reads is well under 1 MiB, so the margin is allocator noise,
    ~1/10 of the 300 MiB that, unbounded, the server would hold (2.7 GB RSS for these 300 MiB)."""
    httpx.get(f"{edge.url}/healthz", timeout=30)  # the server's lazy start-up allocations are behind it
    before = rss(edge)
    sent = 0
    total = 300 * 2**20
    with connect(edge) as sock:

        def attack() -> None:
            nonlocal sent
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + start)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                while sent < total and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(block)
                    sent += len(block)

        peak = peak_while(lambda: rss(edge), attack)
        refused(sock, 431, "headers_too_large", str(MAX_HEADER_BYTES))
    assert sent <= MAX_HEADER_BYTES + 2 * READ + kernel_buffers() + len(block), sent
    assert sent < total
    assert peak - before < 32 * 2**20, (before, peak)
    assert httpx.get(f"{edge.url}/healthz", timeout=30).status_code == 200


def test_more_header_fields_than_allowed_get_431(edge: Server) -> None:
    def request(fields: int) -> socket.socket:
        sock = connect(edge)
        extra = b"".join(b"X-F%d: v\r\n" % i for i in range(fields - 1))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        return sock

    with request(MAX_HEADERS) as sock:  # exactly the limit: served
        assert read_answer(sock)[0] == 200
    with request(MAX_HEADERS + 1) as sock:
        refused(sock, 431, "headers_too_large", f"more than {MAX_HEADERS} header fields")


def test_headers_trickled_past_the_deadline_get_408(impatient: Server) -> None:
    """A byte of headers every 0.1 s, never the blank line: 408 and closed, once 1 s has passed since
    the request's first byte. Each wait for the next byte is a wait for the server's answer."""
    with connect(impatient) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        give_up = time.monotonic() + DEADLINE
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() < give_up, "no answer"
            sock.sendall(b"a")
        refused(sock, 408, "request_timeout", "1 s")


def test_a_connection_that_sends_nothing_gets_408(impatient: Server) -> None:
    with connect(impatient) as sock:
        refused(sock, 408, "request_timeout")


def test_keep_alive_idle_is_not_a_header_timeout(impatient: Server) -> None:
    """Between requests the connection is idle under uvicorn's keep-alive (5 s), not the 1 s header deadline."""
    with connect(impatient) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[0] == 200
            assert not select.select([sock], [], [], 1.5)[0]  # idle past the header deadline: still open


def test_slowloris_cannot_take_every_descriptor(tiny_repo: Path, tmp_path: Path, clean_train_row: dict[str, str]) -> None:
    """1000 connections that each begin a request and never finish, against a server capped at 200
    connections whose open-file limit (lowered here to 600) cannot hold them all: the server keeps at
    most 200 open, closing the one waiting longest with 503; a new client's GET /healthz and POST
    /v1/predict are answered 200. Without the cap the 1000 take every descriptor and the server can
    accept no one (EMFILE). The header deadline is 10 minutes, so the cap alone is at work."""
    cap, slow, limit = 200, 1000, 600
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < slow + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * slow), hard))
    srv = start_server(tiny_repo, tmp_path, MLA_MAX_CONNECTIONS=str(cap), MLA_HEADER_TIMEOUT_SECONDS="600")
    socks: list[socket.socket] = []
    try:
        proc = psutil.Process(srv.proc.pid)
        before = proc.num_fds()
        reserve = fd_reserve(Settings(decode_workers=2))
        assert before + cap + reserve <= limit < slow
        proc.rlimit(psutil.RLIMIT_NOFILE, (limit, proc.rlimit(psutil.RLIMIT_NOFILE)[1]))

        def attack() -> None:
            for _ in range(slow):
                sock = connect(srv)
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
                socks.append(sock)
            # The server closes all but the newest `cap` of them (each after a 503) before the next client comes.
            open_ = {s.fileno(): s for s in socks}
            answers = 0
            give_up = time.monotonic() + DEADLINE
            while len(open_) > cap:
                assert time.monotonic() < give_up, f"{len(open_)} of {slow} slow connections still open"
                for fd in select.select(list(open_), [], [], 1.0)[0]:
                    with contextlib.suppress(ConnectionResetError):
                        data = open_[fd].recv(65536)
                        if data:
                            answers += data.startswith(b"HTTP/1.1 503 ") and b'"overloaded"' in data
                            continue
                    del open_[fd]
            assert set(open_.values()) == set(socks[-cap:])  # the one waiting longest went first
            assert answers >= slow - cap - 10  # each closed one was told why (a reset may eat a few)

        peak = peak_while(proc.num_fds, attack)
        assert peak <= before + cap + reserve, (before, peak)
        assert httpx.get(f"{srv.url}/healthz", timeout=60).status_code == 200
        r = srv.post({"audio": Path(clean_train_row["audio"])})
        assert r.status_code == 200, r.text
        assert proc.num_fds() <= before + cap + reserve
    finally:
        for s in socks:
            s.close()
        stop_server(srv)


def test_the_cap_fits_the_file_limit_and_h11_still_bounds_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap is clamped below the open-file limit less the reserve and the accept backlog; the
    process's soft limit is raised to its hard one; without httptools, uvicorn's h11 gets the byte bound."""
    settings = Settings(max_connections=2048, decode_workers=2)
    room = 3000 - fd_reserve(settings) - http_edge.BACKLOG
    assert 0 < room < 2048
    assert http_edge.connection_cap(settings, 3000) == room
    assert http_edge.connection_cap(settings, 1 << 20) == 2048
    soft = http_edge.raise_fd_limit()
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now
    assert hard == resource.RLIM_INFINITY or now == hard
    monkeypatch.setattr(http_edge, "httptools", None)
    options = http_edge.uvicorn_options(settings)
    assert options["http"] == "h11"
    assert options["h11_max_incomplete_event_size"] == settings.max_header_bytes


def test_uvicorn_is_the_version_whose_internals_the_edge_uses() -> None:
    import uvicorn

    assert uvicorn.__version__.startswith(http_edge.CHECKED_UVICORN), (
        f"uvicorn {uvicorn.__version__}: read its protocols/http/httptools_impl.py against the list above "
        "CHECKED_UVICORN in service/http_edge.py, then update CHECKED_UVICORN"
    )
