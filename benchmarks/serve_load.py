"""The service under load against the servers a user would pick instead, and its CPU cost per request against the
in-process cost of the same work, all measured in one run.

    python -m benchmarks.serve_load [--seconds 10] [--rounds 2] [--first-seconds 30] [--quick]

The request mix: for each of `--clips` real test clips in turn, its wav and mp4 together, the wav alone and the mp4
alone (a third each), the same bodies for every server. The load generator is wrk (C, one thread, `--concurrency`
keep-alive connections; benchmarks/wrk_post.lua), not Python: at 150 requests/s an httpx client costs a large share
of a core, on a machine whose cores the servers need. It is not pinned: on 2 cores, pinning it would take a whole
core from the server. Its own CPU (from wait4) is reported per request instead, to show how little it takes.

- **servers**: the service (`mla serve`, real uvicorn, CPU provider); the naive baseline (benchmarks/naive_server.py:
  torch eager, decoding in the request, one at a time); and the peers a user would pick instead (benchmarks/peers/:
  LitServe and BentoML with batching on and workers for 2 cores, on the same ONNX graphs, the same common.media
  decode functions and the same common.answer fusion, run from their own venv, .venv/peers).
- **answers first**: before any timing, each peer answers a sample of the mix one request at a time and must give
  ours (same labels, abstention and fused set; probabilities within float32 tolerance: benchmarks/peers/servers.py);
  the run fails otherwise, so no one is faster by doing less.
- **throughput and latency** per concurrency level, every server in alternating rounds (the median round is
  reported), so a change in the machine's other load hits all of them; each one's req/s over ours. The server
  measured runs alone: the others are stopped (SIGSTOP to their process groups) meanwhile, since an idle LitServe
  polls its queues with 0.3 of a core (each server's idle CPU is reported), and each round starts with a second
  of unmeasured load.
- **CPU per request**: each server's process tree's CPU seconds (utime + stime from /proc: the server, its workers
  and any reaped child) per answered request.
- **overhead ratio** (the service): its tree's CPU per request over the in-process cost of the same work measured
  here afterwards: decoding each clip with the service's own decode functions (one thread, its limits), plus ONNX
  Runtime with the service's session options at the batch sizes the service actually ran (from its `mla_batch_size`
  histogram), weighted by the share of requests that carry each modality. 1.0 would be a server that adds nothing.
- **first period**: a fresh service, right after /readyz turns 200, `--first-seconds` at concurrency 8, then as long
  again: the first period's p99 against the second's (every batch size is warmed before ready).

Results: benchmarks/results/serve_load.json and .md (copied into docs/benchmarks.md by benchmarks.readme).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.live import free_port, metric_value, wait_ready
from benchmarks.peers.servers import PEERS, Request, check_answers, command, mix, peers_python
from benchmarks.report import RESULTS, markdown_table, write
from benchmarks.serve_cost import inference_per_request, measure, served_batches
from common.manifest import load_manifest, newest_version
from training.data.specs import parse_spec

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk_post.lua")
TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_MODEL = newest_version(ROOT / "models" / "default")


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # its own session: stopping it reaches every worker it started, by its process group
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_ready(proc, f"http://127.0.0.1:{port}", 300)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (LitServe's and BentoML's workers with it), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def only(procs: dict[str, tuple[subprocess.Popen[bytes], int]], name: str | None) -> None:
    """Every server's process group but `name`'s stopped (SIGSTOP), `name`'s running (SIGCONT); None: all running.

    A server waiting for its round must not take CPU from the one measured: an idle LitServe keeps 0.3 of a core
    busy (its queues are polled), which the other servers' figures paid for until this was added."""
    for other, (proc, _) in procs.items():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT if name is None or other == name else signal.SIGSTOP)


def idle_cpu(pid: int, seconds: float) -> float:
    """Cores that the process tree of `pid` keeps busy while it serves nothing, over `seconds`."""
    before = sum(tree_cpu(pid))
    time.sleep(seconds)
    return (sum(tree_cpu(pid)) - before) / seconds


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


def bodies(requests: list[Request], folder: Path) -> tuple[str, list[Path]]:
    """One multipart body per request of the mix, as files wrk reads once."""
    boundary = uuid.uuid4().hex
    paths = []
    for i, request in enumerate(requests):
        parts = []
        for field, (name, data, kind) in request.files().items():
            disposition = f'form-data; name="{field}"; filename="{name}"'
            head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
            parts.append(head.encode() + data + b"\r\n")
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


def run_level(
    port: int, pid: int, concurrency: int, seconds: float, boundary: str, files: list[Path], ours: bool
) -> dict[str, Any]:
    before = tree_cpu(pid)
    batches_before = served_batches(port) if ours else {}
    result = wrk(port, concurrency, seconds, boundary, files)
    after_cpu = tree_cpu(pid)
    drain(port)
    result["main_cpu_s"] = after_cpu[0] - before[0]  # the server process: event loop, ONNX Runtime threads
    result["children_cpu_s"] = after_cpu[1] - before[1]  # its workers (decode workers; a peer's inference workers)
    result["server_cpu_s"] = result["main_cpu_s"] + result["children_cpu_s"]
    if ours:
        result["batches"] = {
            m: {b: n - batches_before.get(m, {}).get(b, 0) for b, n in h.items()} for m, h in served_batches(port).items()
        }
    return result


def drain(port: int, timeout: float = 60.0) -> None:
    """Until our server has no prediction in flight (`mla_predictions_in_flight` 0; a peer, which has no such
    gauge, at once). wrk stops with a request on each connection, which the server still answers: without this, the
    next run's first requests would meet up to twice the concurrency asked for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = metric_value(f"http://127.0.0.1:{port}", "mla_predictions_in_flight")
        if value is None or value == 0:
            return
        time.sleep(0.05)  # a poll: the server has no way to say when it is done
    raise RuntimeError(f"the server on port {port} still had predictions in flight after {timeout:g} s")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def first_minute(port: int, pid: int, seconds: float, boundary: str, files: list[Path]) -> dict[str, Any]:
    """Right after ready: `seconds` at concurrency 8, then as long again; the first's p99 over the second's."""
    first = run_level(port, pid, 8, seconds, boundary, files, True)
    steady = run_level(port, pid, 8, seconds, boundary, files, True)
    return {"first": first, "steady": steady, "p99_ratio": first["p99_us"] / steady["p99_us"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the export every server but the naive one serves")
    parser.add_argument("--run", type=Path, help="its trained run, for the naive torch server (default: its source checkpoint's)")
    parser.add_argument("--data", help="where the clips come from (default: the data it was trained on, its test split)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per server, concurrency level and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (every server once each) per level")
    parser.add_argument("--first-seconds", type=float, default=30.0, help="the first period after ready, and the steady one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clips", type=int, default=64, help="clips in the mix (3 requests each)")
    parser.add_argument("--check", type=int, default=8, help="clips whose 3 requests each peer must answer as ours")
    parser.add_argument("--batch", type=int, default=32, help="the service's MLA_MAX_BATCH_SIZE")
    parser.add_argument(
        "--no-server-inference",
        dest="server_inference",
        action="store_false",
        help="leave out the service run with MLA_INFERENCE=server (its graphs in the server, behind micro-batchers)",
    )
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS, help="peers to run (none: service and naive)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s levels, one round, 8 clips, not written")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the last run's JSON")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.first_seconds, args.clips, args.check = 3.0, 1, 3.0, 8, 2
    return args


def main() -> None:
    args = parse_args()
    if args.report_only:
        last: dict[str, Any] = json.loads((RESULTS / "serve_load.json").read_text())
        report(args, last["results"], write_results=True)
        return
    manifest = load_manifest(args.model) if (args.model / "manifest.json").is_file() else None
    if manifest is None:
        raise SystemExit(f"no {args.model}/manifest.json: run `make default-model` first")
    run = args.run or Path(manifest.training.source_checkpoint).parent
    naive = (run / "checkpoint.pt").is_file()
    if not naive:  # a fresh clone has no trained run: the rest is measured without the naive baseline
        print(f"no {run}/checkpoint.pt: the naive torch server is left out (pass --run, or train the export's recipe)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make bench-serve` installs it (apt-get install wrk)")
    if args.peers and peers_python() is None:
        raise SystemExit("no .venv/peers: python3 -m venv .venv/peers && .venv/peers/bin/pip install -r requirements/peers.in")

    data = args.data or manifest.training.data
    rows = [r for r in parse_spec(data).samples if r.split == "test" and r.path("audio") and r.path("video")][: args.clips]
    pairs: list[tuple[Path, Path]] = [(r.files["audio"], r.files["video"]) for r in rows]
    requests = mix(pairs)
    results: dict[str, Any] = {"load_before": load_average(), "levels": {}, "data": data, "requests": len(requests)}
    results["mix"] = {k: sum(r.kind == k for r in requests) / len(requests) for k in ("audio+video", "audio", "video")}
    with tempfile.TemporaryDirectory() as tmp:
        boundary, files = bodies(requests, Path(tmp))
        service_env = {
            "MLA_PROVIDERS": "cpu",
            "MLA_TMP_DIR": str(Path(tmp) / "uploads"),
            "MLA_MAX_BATCH_SIZE": str(args.batch),
            "MLA_LOG_LEVEL": "INFO",  # the default: the access log costs what it costs in production
        }
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            if naive:  # the others first: their start-up would otherwise overlap the service's first period
                port = free_port()
                procs["naive"] = (start([sys.executable, "-m", "benchmarks.naive_server", str(run), str(port)], port, {}), port)
            for peer in args.peers:
                port = free_port()
                cmd, env = command(peer, args.model, port)
                procs[peer] = (start(cmd, port, env), port)
            ours = {"service": service_env}
            if args.server_inference:
                ours[SERVER_INFERENCE] = {**service_env, "MLA_INFERENCE": "server"}
            for name in reversed(ours):  # the service last: its first minute is measured as soon as it is up
                port = free_port()
                cmd = [sys.executable, "-m", "cli.main", "serve", "--model", str(args.model), "--port", str(port)]
                procs[name] = (start(cmd, port, ours[name]), port)
            sp, sport = procs["service"]
            results["idle_cores"] = {name: idle_cpu(proc.pid, 2 if args.quick else 5) for name, (proc, _) in procs.items()}
            print("idle cores", results["idle_cores"], flush=True)
            only(procs, "service")
            results["first_minute"] = first_minute(sport, sp.pid, args.first_seconds, boundary, files)
            print("first period", {k: v["p99_us"] for k, v in results["first_minute"].items() if isinstance(v, dict)}, flush=True)
            sample = mix(pairs[: args.check])
            checked = [*args.peers, *([SERVER_INFERENCE] if args.server_inference else [])]
            peer_urls = {p: f"http://127.0.0.1:{procs[p][1]}" for p in checked}
            only(procs, None)
            results["answers"] = check_answers(f"http://127.0.0.1:{sport}", peer_urls, sample)
            print("answers", {p: (c["checked"], c["max_prob_diff"], len(c["problems"])) for p, c in results["answers"].items()})
            wrong = {p: c["problems"][:5] for p, c in results["answers"].items() if c["problems"]}
            if wrong:
                raise SystemExit(f"a peer's answers differ from ours, so its timing would mean nothing: {wrong}")
            order = ["service", *([SERVER_INFERENCE] if args.server_inference else []), *(["naive"] if naive else [])]
            order += args.peers
            for c in args.concurrency:
                level: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
                for _ in range(args.rounds):
                    for name in order:
                        proc, p = procs[name]
                        only(procs, name)
                        wrk(p, c, 1, boundary, files)  # back from SIGSTOP: a second's load before the measured one
                        drain(p)
                        level[name].append(run_level(p, proc.pid, c, args.seconds, boundary, files, name == "service"))
                        print(name, c, {k: level[name][-1][k] for k in ("rps", "p99_us", "server_cpu_s", "cpu_s")}, flush=True)
                results["levels"][c] = level
        finally:
            only(procs, None)  # a stopped process group would take SIGTERM only once continued
            for proc, _ in procs.values():
                stop(proc)
    results["load_after"] = load_average()
    sizes = sorted(
        {b for lv in results["levels"].values() for r in lv["service"] for h in r["batches"].values() for b, n in h.items() if n}
    )
    cost = measure(args.model, args.batch, pairs, sizes or [1])
    results["inprocess"] = {
        "decode_s": cost["decode_s"],
        "inference_s": {m: {str(b): s for b, s in d.items()} for m, d in cost["inference_s"].items()},
    }
    report(args, json.loads(json.dumps(results)), write_results=not args.quick)


SERVER_INFERENCE = "service-server"  # `mla serve` with MLA_INFERENCE=server: ours, its graphs in the server
PEER_CONFIG = {
    SERVER_INFERENCE: "service-server: `mla serve` with MLA_INFERENCE=server (the graphs in the server, behind "
    "micro-batchers: the placement a GPU gets)",
    "litserve": "LitServe: 2 inference workers (workers_per_device), max_batch_size 8, batch_timeout 5 ms, fast_queue, "
    "2 API servers",
    "bentoml": "BentoML: a 2-worker front service (decode, answer) calling a 1-worker model service's batchable APIs "
    "(adaptive batching, max_batch_size 8)",
    "naive": "naive: torch eager, one request at a time, uncalibrated fusion (its answers are not checked)",
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    ok = sum(r["ok"] for r in runs)
    median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": median["p50_us"] / 1000,
        "p99_ms": median["p99_us"] / 1000,
        "server_ms": 1000 * sum(r["server_cpu_s"] for r in runs) / max(ok, 1),
        "main_ms": 1000 * sum(r["main_cpu_s"] for r in runs) / max(ok, 1),
        "workers_ms": 1000 * sum(r["children_cpu_s"] for r in runs) / max(ok, 1),
        "wrk_ms": 1000 * sum(r["cpu_s"] for r in runs) / max(ok, 1),
        "errors": sum(r["requests"] - r["ok"] for r in runs),
    }


def overhead(runs: list[dict[str, Any]], s: dict[str, float], results: dict[str, Any]) -> dict[str, float]:
    """The service's in-process cost per request of the mix (each modality weighted by the share of requests that
    carry it), and its tree's CPU over it."""
    decode, cost = results["inprocess"]["decode_s"], results["inprocess"]["inference_s"]
    share = {m: results["mix"]["audio+video"] + results["mix"][m] for m in decode}
    batches: dict[str, dict[int, int]] = {}
    for r in runs:
        for m, h in r["batches"].items():
            for b, n in h.items():
                batches.setdefault(m, {}).setdefault(int(b), 0)
                batches[m][int(b)] += n
    per_call = {m: {int(b): x for b, x in d.items()} for m, d in cost.items()}
    infer = sum(share[m] * inference_per_request({m: h}, per_call) for m, h in batches.items())
    out = {"inprocess_ms": 1000 * (sum(share[m] * decode[m] for m in decode) + infer), "inference_ms": 1000 * infer}
    out["decode_ms"] = out["inprocess_ms"] - out["inference_ms"]
    out["overhead"] = s["server_ms"] / out["inprocess_ms"]
    calls = sum(n for h in batches.values() for n in h.values())
    out["mean_batch"] = sum(n * b for h in batches.values() for b, n in h.items()) / max(calls, 1)
    return out


def describe(model_dir: Path) -> str:
    """The served model in a few words: serving cost depends on its graphs and inputs, not its weights."""
    m = load_manifest(model_dir)
    inputs = ", ".join(f"{name} {list(e.input.shape)} {e.input.dtype}" for name, e in m.modalities.items())
    return f"{m.name} v{m.version} ({m.training.method}; inputs {inputs})"


def report(args: argparse.Namespace, results: dict[str, Any], write_results: bool) -> None:
    """The Markdown and the JSON summary, from `results` as JSON holds them (string keys)."""
    table: list[list[Any]] = []
    costs: list[list[Any]] = []
    summary: dict[int, dict[str, Any]] = {}
    for c, level in sorted(results["levels"].items(), key=lambda kv: int(kv[0])):
        figures = {name: summarize(runs) for name, runs in level.items()}
        ours = figures["service"]
        ours.update(overhead(level["service"], ours, results))
        for name, f in figures.items():
            f["rps_over_ours"], f["p99_over_ours"] = f["rps"] / ours["rps"], f["p99_ms"] / ours["p99_ms"]
            table.append([int(c), name, f["rps"], f["p50_ms"], f["p99_ms"], f["server_ms"], f["wrk_ms"], f["errors"]])
            table[-1] += [f["rps_over_ours"], f["p99_over_ours"]]
        peers = [n for n in figures if n not in ("service", SERVER_INFERENCE, "naive")]
        best = max(peers, key=lambda n: figures[n]["rps"]) if peers else None
        summary[int(c)] = {"servers": figures, "best_peer": best}
        if best is not None:
            summary[int(c)]["service_over_best_peer"] = ours["rps"] / figures[best]["rps"]
        costs.append([int(c), ours["mean_batch"], ours["server_ms"], ours["main_ms"], ours["workers_ms"], ours["inprocess_ms"]])
        costs[-1] += [ours["inference_ms"], ours["overhead"], ours["wrk_ms"]]
    goals = [c for c in (8, 32) if c in summary and summary[c]["best_peer"]]

    def goal(c: int) -> str:
        s = summary[c]
        best, ours = s["servers"][s["best_peer"]], s["servers"]["service"]
        met = s["service_over_best_peer"] >= 1.5 and ours["p99_ms"] <= best["p99_ms"]
        return (
            f"concurrency {c}: ours {ours['rps']:.1f} req/s, p99 {ours['p99_ms']:.0f} ms; best peer {s['best_peer']} "
            f"{best['rps']:.1f} req/s, p99 {best['p99_ms']:.0f} ms: x{s['service_over_best_peer']:.2f}, "
            f"{'met' if met else 'not met'}"
        )

    answers = "; ".join(
        f"{p}: {a['checked']} requests, largest probability difference {a['max_prob_diff']:.1e} (tolerance {a['tolerance']:.1e})"
        for p, a in results.get("answers", {}).items()
    )
    inprocess = results["inprocess"]

    def per_call(cost: dict[str, Any]) -> str:
        return "; ".join(
            f"{m} " + ", ".join(f"{b}: {1000 * x:.2f}" for b, x in d.items()) for m, d in cost["inference_s"].items()
        )

    fm = results["first_minute"]
    header = ["concurrency", "server", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "wrk CPU ms/req", "errors"]
    cost_header = ["concurrency", "mean batch", "server tree", "server process", "workers", "in-process"]
    cost_header += ["of which inference", "overhead ratio", "wrk"]
    mix_text = ", ".join(f"{k} {v:.0%}" for k, v in results["mix"].items())
    md = (
        f"# Service under load against its peers ({os.cpu_count()} CPU cores, CPU only; {results['requests']} requests "
        f"in turn: {mix_text}; {args.rounds} alternating rounds of {args.seconds:g} s per server and level)\n\n"
        + markdown_table([*header, "req/s / ours", "p99 / ours"], table)
        + "\n\nServers: service: `mla serve` (on a CPU its decode workers run the graphs: MLA_INFERENCE=auto); "
        + "; ".join(
            PEER_CONFIG[n] for n in (SERVER_INFERENCE, "naive", *PEERS) if any(n in lv for lv in results["levels"].values())
        )
        + ". Server CPU: the process tree's (the server and every worker); wrk: the load generator's own CPU. "
        + "Each server runs alone: the others' process groups are stopped (SIGSTOP) through its rounds, which begin "
        + "with a second of unmeasured load. Idle, before any load, they kept this many cores busy: "
        + ", ".join(f"{name} {cores:.3f}" for name, cores in results.get("idle_cores", {}).items())
        + ".\n\n"
        f"Answers checked before timing, one request at a time, against ours: {answers or 'no peer run'}.\n\n"
        "Goal (issue 31): ours >= 1.5x the best peer's req/s at equal or better p99, at concurrency 8 and 32: "
        + ("; ".join(goal(c) for c in goals) or "no peer run")
        + ".\n\nThe service's CPU per answered request (ms), against the in-process cost of the same work:\n\n"
        + markdown_table(cost_header, costs)
        + f"\n\nIn-process cost, measured here afterwards: decoding {1000 * inprocess['decode_s']['audio']:.2f} ms (wav) "
        f"and {1000 * inprocess['decode_s']['video']:.2f} ms (mp4) of CPU per clip, weighted by the share of requests "
        "carrying each, and ONNX Runtime with the service's session options (a decode worker's, where the workers run "
        f"the graphs) at the batch sizes the service ran (CPU ms per call by batch size: {per_call(inprocess)}). "
        "Overhead ratio: server tree over in-process; workers: its decode workers.\n\n"
        f"First {args.first_seconds:g} s after /readyz against the next {args.first_seconds:g} s (concurrency 8): "
        f"p99 {fm['first']['p99_us'] / 1000:.1f} ms vs {fm['steady']['p99_us'] / 1000:.1f} ms (ratio {fm['p99_ratio']:.2f}), "
        f"{fm['first']['rps']:.1f} vs {fm['steady']['rps']:.1f} req/s.\n\n"
        f"Model: {describe(Path(args.model))}; clips: the test split of {results['data']}. "
        f"Load average (1, 5, 15 min) before: {results['load_before']}, after: {results['load_after']} "
        "(other jobs share this machine; each ratio compares figures taken side by side).\n"
    )
    if write_results:
        write("serve_load", {"model": str(args.model), "batch": args.batch, "summary": summary, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
