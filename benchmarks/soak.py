"""Soak a live `mla serve` with valid traffic; then measure it beside hostile clients and through a worker kill.

    python -m benchmarks.soak [--model models/default] [--requests 20000] [--concurrency 16]

1. Soak: `--requests` valid mixed requests (wav, flac, mp3, mp4, mkv; audio, video, both,
   use_video_audio) at `--concurrency`; process-tree RSS (server and decode workers) after
   the warm-up and at the end, errors (anything but 200, explicit 503s counted apart), latency.
2. Starvation: valid traffic alone, then the same beside two clients sending 244-byte wavs that
   declare 99,999,999 Hz in a loop; valid throughput with them over without them, same run.
3. A decode worker killed with SIGKILL under load: answers that were not 200, the time from
   the kill to the first success of a request sent after it, and the restart counter.

Results: benchmarks/results/soak.json and soak.md (copied into the README by benchmarks.readme).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import hostile, live
from benchmarks.fuzz_corpus import build_seeds
from benchmarks.report import markdown_table, write

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
Mix = list[tuple[list[tuple[str, tuple[str, bytes]]], dict[str, str]]]


def valid_mix(work: Path) -> Mix:
    """(files, form) pairs covering every modality subset and container the service takes."""
    seeds = {s.name: s for s in build_seeds(work, shared=work / "no-shared-data")}
    wav = next(s for n, s in seeds.items() if n.endswith(".wav"))
    mp4 = next(s for n, s in seeds.items() if n.endswith(".mp4") and n != "v.mp4")
    mix: Mix = [
        ([("audio", (wav.name, wav.data))], {}),
        ([("video", (mp4.name, mp4.data))], {}),
        ([("audio", (wav.name, wav.data)), ("video", (mp4.name, mp4.data))], {}),
        ([("audio", ("a.flac", seeds["a.flac"].data))], {}),
        ([("audio", ("a.mp3", seeds["a.mp3"].data))], {}),
        ([("video", ("v.mkv", seeds["v.mkv"].data))], {"use_video_audio": "true"}),
        ([("video", ("v.mp4", seeds["v.mp4"].data))], {"use_video_audio": "true"}),
        ([("audio", ("a.ogg", seeds["a.ogg"].data)), ("video", ("v.flv", seeds["v.flv"].data))], {}),
    ]
    return mix


async def traffic(
    url: str, mix: Mix, concurrency: int, requests: int | None, seconds: float | None, on_done: Any = None
) -> dict[str, Any]:
    """Send valid requests until `requests` are done or `seconds` have passed."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    done: list[tuple[float, float, int]] = []  # (sent, answered, status)
    issued = 0
    stop = time.monotonic() + (seconds or 1e9)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while (requests is None or issued < requests) and time.monotonic() < stop:
            files, form = mix[issued % len(mix)]
            issued += 1
            t0 = time.monotonic()
            try:
                r = await client.post(f"{url}/v1/predict", files=files, data=form or None)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            t1 = time.monotonic()
            statuses[status] += 1
            done.append((t0, t1, status))
            if status == 200:
                latencies.append(t1 - t0)
            if on_done is not None:
                on_done(len(done))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    q = np.percentile(latencies, [50, 99]) * 1000 if latencies else [float("nan")] * 2
    return {
        "requests": len(done),
        "seconds": elapsed,
        "ok_per_s": statuses[200] / elapsed,
        "statuses": dict(statuses),
        "p50_ms": float(q[0]),
        "p99_ms": float(q[1]),
        "log": done,
    }


def soak(srv: live.Live, mix: Mix, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    marks: dict[str, int] = {}
    samples: list[tuple[int, int]] = []  # (requests done, tree RSS)
    progress = [0]
    running = True

    def sample() -> None:
        while running:
            samples.append((progress[0], srv.tree_rss()))
            time.sleep(0.5)

    def on_done(n: int) -> None:
        progress[0] = n
        if n == warmup:
            marks["warm_rss"] = srv.tree_rss()

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = asyncio.run(traffic(srv.url, mix, concurrency, requests, None, on_done))
    finally:
        running = False
        t.join(5)
    end_rss = srv.tree_rss()
    after = [rss for n, rss in samples if n >= warmup] or [end_rss]
    warm = marks.get("warm_rss", after[0])
    errors = sum(v for k, v in result["statuses"].items() if k not in (200, 503))
    return {
        "requests": result["requests"],
        "concurrency": concurrency,
        "ok_per_s": result["ok_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": errors,
        "explicit_503": result["statuses"].get(503, 0),
        "statuses": {str(k): v for k, v in result["statuses"].items()},
        "warmup_requests": warmup,
        "rss_after_warmup_mb": warm / 2**20,
        "rss_end_mb": end_rss / 2**20,
        "rss_max_after_warmup_mb": max(after) / 2**20,
        "rss_growth_mb": (end_rss - warm) / 2**20,
    }


def starvation(srv: live.Live, mix: Mix, seconds: float) -> dict[str, Any]:
    """Valid throughput alone, then beside two clients looping the 244-byte high-rate wav."""
    alone = asyncio.run(traffic(srv.url, mix, 8, None, seconds))
    bad = hostile.high_rate_wav()
    hostile_statuses: Counter[int] = Counter()
    stop = threading.Event()

    def attacker() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                hostile_statuses[c.post(f"{srv.url}/v1/predict", files={"audio": ("x.wav", bad)}).status_code] += 1

    threads = [threading.Thread(target=attacker) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        beside = asyncio.run(traffic(srv.url, mix, 8, None, seconds))
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    return {
        "valid_ok_per_s_alone": alone["ok_per_s"],
        "valid_ok_per_s_beside_hostile": beside["ok_per_s"],
        "ratio": beside["ok_per_s"] / alone["ok_per_s"],
        "p99_ms_alone": alone["p99_ms"],
        "p99_ms_beside_hostile": beside["p99_ms"],
        "hostile_requests": sum(hostile_statuses.values()),
        "hostile_statuses": {str(k): v for k, v in hostile_statuses.items()},
        "valid_errors_beside_hostile": sum(v for k, v in beside["statuses"].items() if k != 200),
    }


def worker_kill(srv: live.Live, mix: Mix, seconds: float = 8.0) -> dict[str, Any]:
    killed: dict[str, float] = {}

    def killer() -> None:
        time.sleep(seconds / 3)
        victim = srv.decode_workers()[0]
        killed["at"] = time.monotonic()
        victim.kill()

    th = threading.Thread(target=killer)
    th.start()
    result = asyncio.run(traffic(srv.url, mix, 8, None, seconds))
    th.join()
    at = killed["at"]
    after = sorted((answered, sent) for sent, answered, status in result["log"] if status == 200 and sent >= at)
    return {
        "not_200": {str(k): v for k, v in result["statuses"].items() if k != 200},
        "first_success_after_kill_s": (after[0][0] - at) if after else None,
        "successes_after_kill": len(after),
        "restarts_counted": srv.metric('mla_decode_worker_restarts_total{reason="died"}'),
        "ready_after": httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200,
    }


def markdown(r: dict[str, Any]) -> str:
    s, st, k = r["soak"], r["starvation"], r["worker_kill"]
    lines = [
        f"# Soak: {s['requests']} valid mixed requests at concurrency {s['concurrency']} (2 CPU cores, CPU provider)",
        "",
        markdown_table(
            [
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors (not 200, not 503)",
                "explicit 503",
                "RSS after warm-up MB",
                "RSS end MB",
                "growth MB",
            ],
            [
                [
                    s["ok_per_s"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["errors"],
                    s["explicit_503"],
                    s["rss_after_warmup_mb"],
                    s["rss_end_mb"],
                    s["rss_growth_mb"],
                ]
            ],
        ),
        "",
        f"Process tree (server and {r['decode_workers']} decode workers); warm-up: the first {s['warmup_requests']} requests.",
        "",
        "Valid traffic (concurrency 8) beside two clients looping 244-byte wavs that declare 99,999,999 Hz:",
        "",
        markdown_table(
            [
                "valid req/s alone",
                "valid req/s beside them",
                "ratio",
                "p99 ms alone",
                "p99 ms beside",
                "hostile requests",
                "their answers",
            ],
            [
                [
                    st["valid_ok_per_s_alone"],
                    st["valid_ok_per_s_beside_hostile"],
                    st["ratio"],
                    st["p99_ms_alone"],
                    st["p99_ms_beside_hostile"],
                    st["hostile_requests"],
                    ", ".join(f"{c}: {n}" for c, n in st["hostile_statuses"].items()),
                ]
            ],
        ),
        "",
        "One decode worker killed with SIGKILL under load (concurrency 8):",
        "",
        markdown_table(
            [
                "answers not 200",
                "first success of a request sent after the kill, s",
                "successes after the kill",
                "restarts counted",
                "ready after",
            ],
            [
                [
                    ", ".join(f"{c}: {n}" for c, n in k["not_200"].items()) or "none",
                    k["first_success_after_kill_s"],
                    k["successes_after_kill"],
                    k["restarts_counted"],
                    k["ready_after"],
                ]
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--phase-seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mla-soak-") as tmp:
        work = Path(tmp)
        mix = valid_mix(work / "media")
        srv = live.start(args.model, work / "server", MLA_DECODE_WORKERS=str(args.workers))
        try:
            log.info("soak: %d requests at concurrency %d", args.requests, args.concurrency)
            result: dict[str, Any] = {"decode_workers": args.workers}
            result["soak"] = soak(srv, mix, args.requests, args.concurrency, args.warmup)
            log.info("starvation: %g s alone, %g s beside hostile clients", args.phase_seconds, args.phase_seconds)
            result["starvation"] = starvation(srv, mix, args.phase_seconds)
            log.info("worker kill")
            result["worker_kill"] = worker_kill(srv, mix)
            result["upload_leftovers"] = srv.leftovers()
        finally:
            live.stop(srv)
    write("soak", result, markdown(result))
    log.info(markdown(result))


if __name__ == "__main__":
    main()
