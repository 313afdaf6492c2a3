"""The service under load against a naive torch server, and its CPU cost per request against
the in-process cost of the same work, all measured in one run.

    python -m benchmarks.serve_load [--seconds 10] [--rounds 2] [--first-seconds 60]

Each request carries a real demo clip's wav and mp4 (64 pairs in turn). The load generator is
wrk (C, one thread, `--concurrency` keep-alive connections; benchmarks/wrk_post.lua), not
Python: at 150 requests/s an httpx client costs a large share of a core, on a machine whose
cores the server needs. It is not pinned: on 2 cores, pinning it would take a whole core from
the server. Its own CPU (from wait4) is reported per request instead, to show how little it
takes from the server.

- **throughput and latency** per concurrency level, the service (`mla serve`, real uvicorn,
  CPU provider) and the naive baseline (benchmarks/naive_server.py: torch eager, decoding in
  the request, one at a time) in alternating rounds (the median round is reported), so a
  change in the machine's other load hits both.
- **overhead ratio**: the server's process tree's CPU seconds (utime + stime from /proc, the
  server, its decode workers and any reaped child) per answered request, over the in-process
  cost of the same work measured here afterwards: decoding each clip with the service's own
  decode functions (one thread, its limits), plus ONNX Runtime with the service's session
  options at the batch sizes the service actually ran (from its `mla_batch_size` histogram).
  1.0 would be a server that adds nothing to decoding and inference.
- **first minute**: a fresh service, right after /readyz turns 200, `--first-seconds` at
  concurrency 8, then as long again: the first period's p99 against the second's (every batch
  size is warmed before ready, so no first call pays for a new shape on live traffic).

Results: benchmarks/results/serve_load.json and .md (copied into the README by benchmarks.readme).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.live import free_port, wait_ready
from benchmarks.report import RESULTS, markdown_table, write
from benchmarks.serve_cost import InProcess, inference_per_request, served_batches
from common.manifest import load_manifest
from training.data.specs import parse_spec

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk_post.lua")
TICK = os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(proc, f"http://127.0.0.1:{port}", 300)
    return proc


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of `pid` itself (all its threads) and of every process under it, reaped
    children included (utime + stime, and cutime + cstime, from /proc/PID/stat)."""

    def stat(p: int) -> tuple[float, float]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0, 0.0
        return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK

    try:
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    own, reaped = stat(pid)
    return own, reaped + sum(stat(c)[0] for c in children)


def bodies(pairs: list[tuple[Path, Path]], folder: Path) -> tuple[str, list[Path]]:
    """One multipart body per (wav, mp4) pair, as files wrk reads once."""
    boundary = uuid.uuid4().hex
    paths = []
    for i, (audio, video) in enumerate(pairs):
        parts = []
        for field, path, kind in (("audio", audio, "audio/wav"), ("video", video, "video/mp4")):
            disposition = f'form-data; name="{field}"; filename="{path.name}"'
            head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
            parts.append(head.encode() + path.read_bytes() + b"\r\n")
        out = folder / f"body-{i}.bin"
        out.write_bytes(b"".join(parts) + f"--{boundary}--\r\n".encode())
        paths.append(out)
    return boundary, paths


def wrk(port: int, concurrency: int, seconds: float, boundary: str, files: list[Path]) -> dict[str, Any]:
    """One wrk run; its JSON summary plus its own CPU seconds."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "60s", "-s", str(LUA)]
    cmd += [f"http://127.0.0.1:{port}", "--", boundary, *map(str, files)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    proc = subprocess.run(cmd, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in proc.stdout.decode().splitlines() if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(line)
    result["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    errors = result["non2xx"] + result["connect"] + result["read"] + result["write"] + result["timeout"]
    result["ok"] = result["requests"] - errors
    result["rps"] = result["ok"] / (result["duration_us"] / 1e6)
    return result


def run_level(port: int, pid: int, concurrency: int, seconds: float, boundary: str, files: list[Path]) -> dict[str, Any]:
    before = tree_cpu(pid)
    batches_before = served_batches(port)
    result = wrk(port, concurrency, seconds, boundary, files)
    after_cpu = tree_cpu(pid)
    result["main_cpu_s"] = after_cpu[0] - before[0]  # the server process: event loop, ONNX Runtime threads
    result["children_cpu_s"] = after_cpu[1] - before[1]  # its decode workers
    result["server_cpu_s"] = result["main_cpu_s"] + result["children_cpu_s"]
    result["batches"] = {
        m: {b: n - batches_before.get(m, {}).get(b, 0) for b, n in h.items()} for m, h in served_batches(port).items()
    }
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def first_minute(port: int, pid: int, seconds: float, boundary: str, files: list[Path]) -> dict[str, Any]:
    """Right after ready: `seconds` at concurrency 8, then as long again; the first's p99 over the second's."""
    first = run_level(port, pid, 8, seconds, boundary, files)
    steady = run_level(port, pid, 8, seconds, boundary, files)
    return {"first": first, "steady": steady, "p99_ratio": first["p99_us"] / steady["p99_us"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs/default", help="the trained run (for the torch baseline)")
    parser.add_argument("--model", type=Path, default=ROOT / "models/default/1", help="its export (for the service)")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating service/naive rounds per level")
    parser.add_argument("--first-seconds", type=float, default=60.0, help="the first period after ready, and the steady one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the last run's JSON")
    args = parser.parse_args()
    if args.report_only:
        last: dict[str, Any] = json.loads((RESULTS / "serve_load.json").read_text())["results"]
        last["levels"] = {int(c): lv for c, lv in last["levels"].items()}
        for lv in last["levels"].values():
            for r in lv["service"]:
                r["batches"] = {m: {int(b): n for b, n in h.items()} for m, h in r["batches"].items()}
        per_call = {m: {int(b): x for b, x in d.items()} for m, d in last["inprocess"]["inference_s"].items()}
        report(args, last, last["inprocess"]["decode_s"], per_call)
        return
    if not (args.model / "manifest.json").is_file() or not (args.run / "checkpoint.pt").is_file():
        raise SystemExit(f"need {args.run}/checkpoint.pt and {args.model}/manifest.json: run `make default-model` first")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make bench-serve` installs it (apt-get install wrk)")

    rows = [r for r in parse_spec(args.data).samples if r.split == "test" and r.audio and r.video][: args.clips]
    pairs: list[tuple[Path, Path]] = [(r.audio, r.video) for r in rows]  # type: ignore[misc]
    results: dict[str, Any] = {"load_before": load_average(), "levels": {}}
    with tempfile.TemporaryDirectory() as tmp:
        boundary, files = bodies(pairs, Path(tmp))
        service_env = {
            "MLA_PROVIDERS": "cpu",
            "MLA_TMP_DIR": str(Path(tmp) / "uploads"),
            "MLA_MAX_BATCH_SIZE": str(args.batch),
            "MLA_LOG_LEVEL": "INFO",  # the default: the access log costs what it costs in production
        }
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            port = free_port()  # the naive server first: its start-up would otherwise overlap the first minute
            procs["naive"] = (start([sys.executable, "-m", "benchmarks.naive_server", str(args.run), str(port)], port, {}), port)
            port = free_port()
            cmd = [sys.executable, "-m", "cli.main", "serve", "--model", str(args.model), "--port", str(port)]
            procs["service"] = (start(cmd, port, service_env), port)
            sp, sport = procs["service"]
            results["first_minute"] = first_minute(sport, sp.pid, args.first_seconds, boundary, files)
            print("first minute", {k: v["p99_us"] for k, v in results["first_minute"].items() if isinstance(v, dict)}, flush=True)
            for c in args.concurrency:
                level: dict[str, list[dict[str, Any]]] = {"service": [], "naive": []}
                for _ in range(args.rounds):
                    for name, (proc, p) in procs.items():
                        level[name].append(run_level(p, proc.pid, c, args.seconds, boundary, files))
                        print(name, c, {k: level[name][-1][k] for k in ("rps", "p99_us", "server_cpu_s", "cpu_s")}, flush=True)
                results["levels"][c] = level
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(30)
    results["load_after"] = load_average()
    cost = InProcess(args.model, args.batch)
    decode = cost.decode_cpu(pairs)
    sizes = sorted(
        {b for lv in results["levels"].values() for r in lv["service"] for h in r["batches"].values() for b, n in h.items() if n}
    )
    inference = cost.inference_cpu(pairs, sizes or [1])
    results["inprocess"] = {
        "decode_s": decode,
        "inference_s": {m: {str(b): s for b, s in d.items()} for m, d in inference.items()},
    }
    report(args, results, decode, inference)


Cost = dict[str, dict[int, float]]  # modality -> batch size -> CPU seconds per session call


def summarize(
    runs: list[dict[str, Any]], decode: dict[str, float], inference: dict[str, dict[int, float]] | None
) -> dict[str, float]:
    ok = sum(r["ok"] for r in runs)
    median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    out = {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": median["p50_us"] / 1000,
        "p99_ms": median["p99_us"] / 1000,
        "server_ms": 1000 * sum(r["server_cpu_s"] for r in runs) / max(ok, 1),
        "main_ms": 1000 * sum(r["main_cpu_s"] for r in runs) / max(ok, 1),
        "workers_ms": 1000 * sum(r["children_cpu_s"] for r in runs) / max(ok, 1),
        "wrk_ms": 1000 * sum(r["cpu_s"] for r in runs) / max(ok, 1),
        "errors": sum(r["requests"] - r["ok"] for r in runs),
    }
    if inference is not None:
        batches: dict[str, dict[int, int]] = {}
        for r in runs:
            for m, h in r["batches"].items():
                for b, n in h.items():
                    batches.setdefault(m, {}).setdefault(b, 0)
                    batches[m][b] += n
        infer = inference_per_request(batches, inference)
        out["inprocess_ms"] = 1000 * (sum(decode.values()) + infer)
        out["inference_ms"] = 1000 * infer
        out["overhead"] = out["server_ms"] / out["inprocess_ms"]
        calls = sum(n for h in batches.values() for n in h.values())
        out["mean_batch"] = sum(n * b for h in batches.values() for b, n in h.items()) / max(calls, 1)
    return out


def describe(model_dir: Path) -> str:
    """The served model in a few words: serving cost depends on its graphs and inputs, not its weights."""
    m = load_manifest(model_dir)
    inputs = ", ".join(f"{name} {list(e.input.shape)} {e.input.dtype}" for name, e in m.modalities.items())
    return f"{m.name} v{m.version} ({m.training.method} on {m.training.data}; inputs {inputs})"


def why(c: int, level: dict[str, Any], decode: dict[str, float]) -> str:
    """Where the overhead goes at one level, and how much of the machine each server got, from its figures."""
    s, n = level["service"], level["naive"]
    beyond_decode = s["workers_ms"] - 1000 * sum(decode.values())
    beyond_inference = s["main_ms"] - s["inference_ms"]
    return (
        f" At concurrency {c}: the decode workers spent {beyond_decode:.2f} ms per request beyond the in-process decode, the "
        f"server process {beyond_inference:.2f} ms beyond inference (HTTP, multipart, files, orchestration, fusion, logs); "
        f"the service kept {s['rps'] * s['server_ms'] / 1000:.2f} cores busy, "
        f"the naive server {n['rps'] * n['server_ms'] / 1000:.2f} (other jobs had the rest)."
    )


def report(args: argparse.Namespace, results: dict[str, Any], decode: dict[str, float], inference: Cost) -> None:
    table: list[list[Any]] = []
    costs: list[list[Any]] = []
    summary: dict[int, dict[str, Any]] = {}
    for c, level in results["levels"].items():
        s, n = summarize(level["service"], decode, inference), summarize(level["naive"], decode, None)
        summary[c] = {"service": s, "naive": n, "service_over_naive": s["rps"] / n["rps"]}
        table.append([c, s["rps"], s["p50_ms"], s["p99_ms"], n["rps"], n["p50_ms"], n["p99_ms"], s["rps"] / n["rps"]])
        costs.append([c, s["mean_batch"], s["server_ms"], s["main_ms"], s["workers_ms"], s["inprocess_ms"]])
        costs[-1] += [s["inference_ms"], s["overhead"], s["wrk_ms"], n["server_ms"]]
    fm = results["first_minute"]
    goals = [c for c in (8, 32) if c in summary]
    over_ok = all(summary[c]["service"]["overhead"] <= 1.15 for c in goals)
    naive_ok = all(summary[c]["service_over_naive"] >= 3.0 for c in goals)
    per_call = "; ".join(f"{m} " + ", ".join(f"{b}: {1000 * s:.2f}" for b, s in d.items()) for m, d in inference.items())
    throughput_header = ["concurrency", "service req/s", "p50 ms", "p99 ms", "naive req/s", "naive p50 ms", "naive p99 ms"]
    cost_header = ["concurrency", "mean batch", "server tree", "server process", "decode workers", "in-process"]
    cost_header += ["of which inference", "overhead ratio", "wrk", "naive server"]
    md = (
        f"# Service under load ({os.cpu_count()} CPU cores, CPU provider, audio+video per request, "
        f"{args.rounds} alternating rounds of {args.seconds:g} s per level)\n\n"
        + markdown_table([*throughput_header, "service / naive"], table)
        + "\n\nCPU per answered request (ms), against the in-process cost of the same work:\n\n"
        + markdown_table(cost_header, costs)
        + f"\n\nIn-process cost, measured here afterwards: decoding {1000 * decode['audio']:.2f} ms (wav) + "
        f"{1000 * decode['video']:.2f} ms (mp4) of CPU per request, and ONNX Runtime at the batch sizes the service ran "
        f"(CPU ms per call by batch size: {per_call}). Overhead ratio: server tree over in-process. "
        "Server process: the event loop and ONNX Runtime's threads; decode workers: their processes; "
        "wrk: the load generator's own CPU.\n\n"
        f"Goals at concurrency 8 and 32: overhead ratio <= 1.15: {'met' if over_ok else 'not met'}; "
        f"service / naive >= 3: {'met' if naive_ok else 'not met'}." + "".join(why(c, summary[c], decode) for c in goals) + "\n\n"
        f"First {args.first_seconds:g} s after /readyz against the next {args.first_seconds:g} s (concurrency 8): "
        f"p99 {fm['first']['p99_us'] / 1000:.1f} ms vs {fm['steady']['p99_us'] / 1000:.1f} ms (ratio {fm['p99_ratio']:.2f}), "
        f"p50 {fm['first']['p50_us'] / 1000:.1f} vs {fm['steady']['p50_us'] / 1000:.1f} ms, "
        f"{fm['first']['rps']:.1f} vs {fm['steady']['rps']:.1f} req/s.\n\n"
        f"Model: {describe(args.model)}. "
        f"Load average (1, 5, 15 min) before: {results['load_before']}, after: {results['load_after']} "
        "(other jobs share this machine; each ratio compares figures taken side by side).\n"
    )
    write("serve_load", {"model": str(args.model), "batch": args.batch, "summary": summary, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
