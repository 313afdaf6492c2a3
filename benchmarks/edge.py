"""Attack the HTTP edge of a live `mla serve` (service/http_edge.py): huge headers, then slowloris.

    python -m benchmarks.edge [--model models/default] [--slow 4000] [--slowloris-seconds 60]

1. Headers: for each shape (small fields, as in the issue; 1 KiB fields; one endless value), a
   client opens a connection and streams 300 MiB of headers, looking for an answer between 1 MiB
   sends, then does it again on a new connection, for `--phase-seconds`. Beside it a well-behaved
   client asks GET /healthz every 10 ms; its p99 latency against the same client alone. Per shape:
   the answers, bytes the attacker got through before each answer, bytes the server read per
   attack (/proc/PID/io rchar, the poller's requests taken out), server RSS before/peak/after.
2. Slowloris: `--slow` connections that each begin a request and then send one header byte every
   `--trickle` s, reconnecting when closed, for `--slowloris-seconds`, while a client sends real
   POST /v1/predict requests (a spoken digit from ../shared/data/fsdd, else a tone); its successes
   and p99 against a run alone, the server's open descriptors, how the slow connections ended.

Server defaults throughout (64 KiB / 100 fields of headers, 10 s header deadline, 2048 connections).
Loopback only; every loop is bounded in time. Results: benchmarks/results/edge.json and edge.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import multiprocessing
import resource
import select
import socket
import tempfile
import threading
import time
import wave
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks import live
from benchmarks.report import markdown_table, write

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings" / "3_george_0.wav"
MIB = 2**20
ATTACK_BYTES = 300 * MIB
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
SHAPES = {  # name -> (what follows the request line and Host, the 1 MiB block repeated)
    "small fields": (b"", b"".join(b"X-Pad-%06d: aaaaaaaa\r\n" % i for i in range(MIB // 24))[:MIB]),
    "1 KiB fields": (b"", b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"a" * 1000) for i in range(1024))[:MIB]),
    "one endless value": (b"X-Endless: ", b"a" * MIB),
}


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def status_of(data: bytes) -> str:
    """'431 headers_too_large' from the start of an answer."""
    parts = data.split(b" ", 2)
    status = parts[1].decode() if len(parts) > 1 else "?"
    code = data.split(b'"code": "', 1)[1].split(b'"', 1)[0].decode() if b'"code": "' in data else ""
    return f"{status} {code}".strip()


# -- 1. headers ---------------------------------------------------------------------------------


def header_attacks(url: str, start: bytes, block: bytes, seconds: float) -> list[tuple[int, str]]:
    """Attacks one after another for `seconds` (in a process of its own): (bytes sent, answer) each."""
    results = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        sent = 0
        with socket.create_connection(address(url), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n" + start)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                while sent < ATTACK_BYTES and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(block)
                    sent += len(block)
            try:
                answer = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        results.append((sent, status_of(answer) if answer else "closed, no answer"))
    return results


class Poller:
    """GET /healthz every 10 ms on one keep-alive connection; latencies and requests sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        sock: socket.socket | None = None
        while not self._stop.wait(0.01):
            t0 = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(address(self.url), timeout=30)
                sock.sendall(HEALTHZ)
                data = b""
                while not data.endswith(b"}"):  # the answer is small JSON
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
                self.latencies.append(time.perf_counter() - t0)
            except OSError:
                self.failures += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()


def p99_ms(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99) * 1000) if latencies else float("nan")


def headers_phase(srv: live.Live, seconds: float) -> dict[str, Any]:
    proc = psutil.Process(srv.proc.pid)
    with Poller(srv.url):
        time.sleep(1)  # warm-up
    out: dict[str, Any] = {"shapes": {}}
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        pool.submit(time.sleep, 0).result()  # the attacker's process is up before anything is timed
        for name, (start, block) in SHAPES.items():
            log.info("headers: %s, %g s alone then %g s beside the attack", name, seconds, seconds)
            with Poller(srv.url) as alone:
                time.sleep(seconds)
            rss_before, read_before = proc.memory_info().rss, proc.io_counters().read_chars
            peak = [rss_before]
            done = threading.Event()

            def watch(peak: list[int] = peak, done: threading.Event = done) -> None:
                while not done.wait(0.01):
                    peak[0] = max(peak[0], proc.memory_info().rss)

            watcher = threading.Thread(target=watch)
            watcher.start()
            with Poller(srv.url) as poller:
                attacks = pool.submit(header_attacks, srv.url, start, block, seconds).result()
            done.set()
            watcher.join()
            time.sleep(1)
            read = proc.io_counters().read_chars - read_before - len(HEALTHZ) * (len(poller.latencies) + poller.failures)
            sent = [s for s, _ in attacks]
            out["shapes"][name] = {
                "attacks": len(attacks),
                "answers": dict(Counter(a for _, a in attacks)),
                "attacker_bytes_sent_mean": float(np.mean(sent)),
                "attacker_bytes_sent_max": max(sent),
                "server_bytes_read_per_attack": read / len(attacks),
                "rss_before_mb": rss_before / MIB,
                "rss_peak_mb": max(peak[0], proc.memory_info().rss) / MIB,
                "rss_after_mb": proc.memory_info().rss / MIB,
                "healthz_p99_ms_alone": p99_ms(alone.latencies),
                "healthz_p99_ms": p99_ms(poller.latencies),
                "healthz_p99_ratio": p99_ms(poller.latencies) / p99_ms(alone.latencies),
                "healthz_requests": len(poller.latencies),
                "healthz_failures": poller.failures,
            }
    return out


# -- 2. slowloris -------------------------------------------------------------------------------


async def _slow_connection(url: str, trickle: float, stop: float, ended: Counter[str], opened: list[int]) -> None:
    host, port = address(url)
    rng = np.random.default_rng()
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            ended["connect failed"] += 1
            await asyncio.sleep(trickle)
            continue
        opened[0] += 1
        how = "still open at the end"
        try:
            writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            while time.monotonic() < stop:
                try:
                    data = await asyncio.wait_for(reader.read(4096), trickle * (0.5 + rng.random()))
                except TimeoutError:
                    writer.write(b"a")
                    continue
                how = status_of(data) if data else "closed, no answer"
                break
        except ConnectionError:
            how = "reset"
        finally:
            ended[how] += 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def slowloris(url: str, connections: int, trickle: float, seconds: float) -> dict[str, Any]:
    """`connections` slow clients for `seconds` (in a process of its own): how their connections ended."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ended: Counter[str] = Counter()
    opened = [0]

    async def main() -> None:
        stop = time.monotonic() + seconds
        tasks = []
        for _ in range(connections):  # ramped: the listen backlog is 2048
            tasks.append(asyncio.create_task(_slow_connection(url, trickle, stop, ended, opened)))
            await asyncio.sleep(seconds / 20 / connections)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return {"connections_opened": opened[0], "ended": dict(ended)}


def predict_load(url: str, audio: bytes, seconds: float, concurrency: int = 2) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    status = c.post(f"{url}/v1/predict", files={"audio": ("digit.wav", audio, "audio/wav")}).status_code
                except httpx.HTTPError:
                    status = 0
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "requests": sum(statuses.values()),
        "ok": statuses[200],
        "ok_per_s": statuses[200] / seconds,
        "statuses": dict(statuses),
        "p99_ms": p99_ms(latencies),
    }


def spoken_digit() -> bytes:
    """A spoken 3 from FSDD when the shared data is here, else a second of a 440 Hz tone (16-bit, 8 kHz)."""
    if FSDD.is_file():
        return FSDD.read_bytes()
    rate = 8000
    pcm = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def slowloris_phase(srv: live.Live, connections: int, trickle: float, seconds: float, baseline: float) -> dict[str, Any]:
    proc = psutil.Process(srv.proc.pid)
    audio = spoken_digit()
    alone = predict_load(srv.url, audio, baseline)
    fds_before, rss_before = proc.num_fds(), proc.memory_info().rss
    fds: list[int] = []
    rss: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            fds.append(proc.num_fds())
            rss.append(proc.memory_info().rss)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        attack = pool.submit(slowloris, srv.url, connections, trickle, seconds)
        time.sleep(seconds / 10)  # the slow connections are mostly open before the real client starts
        beside = predict_load(srv.url, audio, seconds * 0.8)
        slow = attack.result()
    done.set()
    watcher.join()
    return {
        "slow_connections": connections,
        "trickle_s": trickle,
        "seconds": seconds,
        "audio": FSDD.name if FSDD.is_file() else "440 Hz tone",
        "alone": alone,
        "beside": beside,
        "p99_ratio": beside["p99_ms"] / alone["p99_ms"],
        "server_fds_before": fds_before,
        "server_fds_max": max(fds),
        "server_fds_median": float(np.median(fds)),
        "server_rss_before_mb": rss_before / MIB,
        "server_rss_max_mb": max(rss) / MIB,
        "slow": slow,
    }


# -- report -------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    h, s = r["headers"], r["slowloris"]
    rows = [
        [
            name,
            x["attacks"],
            ", ".join(f"{a}: {n}" for a, n in x["answers"].items()),
            x["attacker_bytes_sent_mean"] / MIB,
            x["server_bytes_read_per_attack"] / 1024,
            f"{x['rss_before_mb']:.0f} / {x['rss_peak_mb']:.0f} / {x['rss_after_mb']:.0f}",
            x["healthz_p99_ms_alone"],
            x["healthz_p99_ms"],
            x["healthz_p99_ratio"],
        ]
        for name, x in h["shapes"].items()
    ]
    lines = [
        f"# The HTTP edge under attack ({r['cpu_count']} CPU cores, loopback, server defaults)",
        "",
        f"Each attacker streams 300 MiB of headers on one connection, again and again for {r['phase_seconds']:g} s; "
        "GET /healthz every 10 ms beside it, against the same client alone just before. Before the edge, one such "
        "connection took the server to 2.7 GB RSS.",
        "",
        markdown_table(
            [
                "headers",
                "attacks",
                "answers",
                "MiB sent per attack",
                "KiB the server read per attack",
                "server RSS MB before / peak / after",
                "healthz p99 ms alone",
                "healthz p99 ms beside",
                "p99 ratio",
            ],
            rows,
        ),
        "",
        "MiB sent is what the kernel's socket buffers took before the answer came; the server reads at most",
        "64 KiB of headers plus one 256 KiB read.",
        "",
        f"Slowloris: {s['slow_connections']} connections each sending a header byte every ~{s['trickle_s']:g} s "
        f"(reconnecting when closed) for {s['seconds']:g} s, beside 2 clients posting {s['audio']} to /v1/predict:",
        "",
        markdown_table(
            [
                "predict ok alone",
                "ok/s alone",
                "predict ok beside",
                "ok/s beside",
                "not ok beside",
                "p99 ms alone",
                "p99 ms beside",
                "p99 ratio",
                "server fds before / median / max",
                "server RSS MB before / max",
                "slow connections opened",
                "how they ended",
            ],
            [
                [
                    f"{s['alone']['ok']}/{s['alone']['requests']}",
                    s["alone"]["ok_per_s"],
                    f"{s['beside']['ok']}/{s['beside']['requests']}",
                    s["beside"]["ok_per_s"],
                    ", ".join(f"{c}: {n}" for c, n in s["beside"]["statuses"].items() if c != 200) or "none",
                    s["alone"]["p99_ms"],
                    s["beside"]["p99_ms"],
                    s["p99_ratio"],
                    f"{s['server_fds_before']} / {s['server_fds_median']:.0f} / {s['server_fds_max']}",
                    f"{s['server_rss_before_mb']:.0f} / {s['server_rss_max_mb']:.0f}",
                    s["slow"]["connections_opened"],
                    ", ".join(f"{c}: {n}" for c, n in s["slow"]["ended"].items()),
                ]
            ],
        ),
        "",
        "With more slow connections than the cap (2048), each new one closes the one waiting longest, which",
        "reconnects at once: the attackers churn through connections, and that work (on the same cores as the",
        "server) is what the real client's p99 pays.",
    ]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--phase-seconds", type=float, default=8.0, help="per header shape, and the poller alone")
    ap.add_argument("--slow", type=int, default=4000, help="slowloris connections")
    ap.add_argument("--trickle", type=float, default=3.0, help="seconds between a slow connection's bytes (jittered)")
    ap.add_argument("--slowloris-seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=20.0, help="predict load alone")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server (a child) inherits it, like a service manager's limit
    with tempfile.TemporaryDirectory(prefix="mla-edge-") as tmp:
        srv = live.start(args.model, Path(tmp) / "server", MLA_DECODE_WORKERS="2")
        try:
            result: dict[str, Any] = {"cpu_count": psutil.cpu_count(), "phase_seconds": args.phase_seconds}
            result["headers"] = headers_phase(srv, args.phase_seconds)
            log.info("slowloris: %d connections for %g s", args.slow, args.slowloris_seconds)
            result["slowloris"] = slowloris_phase(srv, args.slow, args.trickle, args.slowloris_seconds, args.baseline_seconds)
            result["ready_after"] = httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
        finally:
            live.stop(srv)
    write("edge", result, markdown(result))
    log.info(markdown(result))


if __name__ == "__main__":
    main()
