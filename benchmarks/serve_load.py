"""The service under load: requests/s and latency at concurrency 1, 8 and 32, against a naive
torch baseline and the raw ONNX Runtime limit, all measured in one run.

    python -m benchmarks.serve_load [--run runs/default] [--model models/default/1] [--seconds 10]

Each request carries a real demo clip's wav and mp4. The service runs as `mla serve` (real
uvicorn, CPU provider); the naive baseline is benchmarks/naive_server.py; the raw limit is
ONNX Runtime on pre-decoded inputs at the service's batch size, no HTTP, no decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.report import markdown_table, write
from common.manifest import AudioEntry, VideoEntry, load_manifest
from common.media import AudioSpec, VideoSpec, load_audio, load_video
from training.data.specs import parse_spec

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} never became ready")


async def load(url: str, clips: list[tuple[bytes, bytes]], concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        n = i
        while time.perf_counter() < stop:
            audio, video = clips[n % len(clips)]
            n += concurrency
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/predict", files={"audio": ("a.wav", audio), "video": ("v.mp4", video)})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": q[0],
        "p95_ms": q[1],
        "p99_ms": q[2],
    }


def raw_limit(model_dir: Path, clips: list[tuple[Path, Path]], batch: int, seconds: float = 5.0) -> float:
    """Audio+video pairs per second through ONNX Runtime alone, inputs already decoded."""
    import onnxruntime as ort

    manifest = load_manifest(model_dir)
    a, v = manifest.modalities["audio"], manifest.modalities["video"]
    assert isinstance(a, AudioEntry)
    assert isinstance(v, VideoEntry)
    waves = np.stack([load_audio(p, AudioSpec(a.sample_rate, a.clip_samples)) for p, _ in clips][:batch])
    frames = np.stack([load_video(p, VideoSpec(v.frames, v.height, v.width)) for _, p in clips][:batch])
    sa = ort.InferenceSession(str(model_dir / a.file), providers=["CPUExecutionProvider"])
    sv = ort.InferenceSession(str(model_dir / v.file), providers=["CPUExecutionProvider"])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sa.run(None, {a.input.name: waves})
        sv.run(None, {v.input.name: frames})
        done += len(waves)
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs/default", help="the trained run (for the torch baseline)")
    parser.add_argument("--model", type=Path, default=ROOT / "models/default/1", help="its export (for the service)")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clips", type=int, default=64)
    args = parser.parse_args()
    if not (args.model / "manifest.json").is_file() or not (args.run / "checkpoint.pt").is_file():
        raise SystemExit(f"need {args.run}/checkpoint.pt and {args.model}/manifest.json: run `make default-model` first")

    rows = [r for r in parse_spec(args.data).samples if r.split == "test" and r.audio and r.video][: args.clips]
    pairs = [(r.audio, r.video) for r in rows]
    clips = [(a.read_bytes(), v.read_bytes()) for a, v in pairs]  # type: ignore[union-attr]
    results: dict[str, Any] = {"service": {}, "naive": {}}
    batch = 32
    with tempfile.TemporaryDirectory() as tmp:
        service_env = {"MLA_PROVIDERS": "cpu", "MLA_TMP_DIR": tmp, "MLA_LOG_LEVEL": "WARNING", "MLA_MAX_BATCH_SIZE": str(batch)}
        servers = {
            "service": (["-m", "cli.main", "serve", "--model", str(args.model), "--port"], service_env),
            "naive": (["-m", "benchmarks.naive_server", str(args.run)], {}),
        }
        for name, (argv, env) in servers.items():
            port = free_port()
            proc = start([sys.executable, *argv, str(port)], port, env)
            try:
                for c in args.concurrency:
                    results[name][c] = asyncio.run(load(f"http://127.0.0.1:{port}", clips, c, args.seconds))
                    print(name, c, results[name][c], flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    results["raw_rps"] = raw_limit(args.model, pairs, batch)  # type: ignore[arg-type]
    table = []
    for c in args.concurrency:
        s, n = results["service"][c], results["naive"][c]
        table.append(
            [
                c,
                s["rps"],
                s["p50_ms"],
                s["p95_ms"],
                s["p99_ms"],
                n["rps"],
                n["p50_ms"],
                n["p99_ms"],
                s["rps"] / n["rps"],
                s["rps"] / results["raw_rps"],
            ]
        )
    md = (
        f"# Service under load ({os.cpu_count()} CPU cores, CPU provider, audio+video per request, "
        f"{args.seconds:g} s per level)\n\n"
        + markdown_table(
            [
                "concurrency",
                "service req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "naive req/s",
                "naive p50 ms",
                "naive p99 ms",
                "service / naive",
                "service / raw",
            ],
            table,
        )
        + f"\n\nRaw ONNX Runtime on pre-decoded inputs (batch {batch}, no HTTP, no decoding): "
        f"{results['raw_rps']:.0f} pairs/s.\n"
    )
    write(
        "serve_load",
        {
            "model": str(args.model),
            "results": results,
            "batch": batch,
            "median_service_rps": statistics.median(results["service"][c]["rps"] for c in args.concurrency),
        },
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
