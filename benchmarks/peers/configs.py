"""What was tried for each peer's configuration: every candidate on the same mix at one concurrency, side by side.

    python -m benchmarks.peers.configs [--seconds 8] [--concurrency 8] [--clips 16]

Each candidate is started, loaded with wrk for `--seconds` (after as long again to warm up), and stopped; the table
(req/s, p99, server CPU per request) is printed. The benchmark (benchmarks/serve_load.py) then runs the defaults that
benchmarks/peers/litserve_server.py and bentoml_service.py carry; benchmarks/peers/README.md records the outcome.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.live import free_port
from benchmarks.peers.servers import command, mix
from benchmarks.report import markdown_table
from benchmarks.serve_load import DEFAULT_MODEL, bodies, run_level, start, stop
from common.manifest import load_manifest
from training.data.specs import parse_spec

# (peer, label, extra command-line arguments, extra environment)
CANDIDATES: list[tuple[str, str, list[str], dict[str, str]]] = [
    ("litserve", "1 worker, batch 8, 5 ms", ["--workers", "1", "--api-servers", "1"], {}),
    ("litserve", "2 workers, batch 8, 5 ms, 1 API server", ["--api-servers", "1"], {}),
    ("litserve", "3 workers, batch 8, 5 ms", ["--workers", "3", "--api-servers", "1"], {}),
    ("litserve", "2 workers, no batching", ["--batch", "1", "--timeout-ms", "0", "--api-servers", "1"], {}),
    ("litserve", "2 workers, batch 8, 5 ms, no fast_queue", ["--no-fast-queue", "--api-servers", "1"], {}),
    ("litserve", "2 workers, batch 8, 5 ms, 2 API servers (default)", [], {}),
    ("litserve", "1 worker, batch 8, 5 ms, 2 API servers", ["--workers", "1"], {}),
    ("bentoml", "front 2 workers, model 1 (default)", [], {}),
    ("bentoml", "front 1 worker, model 1", [], {"PEERS_FRONT_WORKERS": "1"}),
    ("bentoml", "front 2 workers, model 2", [], {"PEERS_MODEL_WORKERS": "2"}),
    ("bentoml", "front 3 workers, model 1", [], {"PEERS_FRONT_WORKERS": "3"}),
    ("bentoml", "front 2 workers, model 1, model concurrency 8", [], {"PEERS_MODEL_CONCURRENCY": "8"}),
    ("bentoml", "front 2 workers, model 1, batch 16", [], {"PEERS_MAX_BATCH": "16"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--only", default="", help="only the candidates whose peer or label contains this")
    args = parser.parse_args()
    data = load_manifest(args.model).training.data
    rows = [r for r in parse_spec(data).samples if r.split == "test" and r.path("audio") and r.path("video")][: args.clips]
    requests = mix((r.files["audio"], r.files["video"]) for r in rows)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        boundary, files = bodies(requests, Path(tmp))
        for peer, label, extra, env in CANDIDATES:
            if args.only not in f"{peer} {label}":
                continue
            port = free_port()
            cmd, base_env = command(peer, args.model, port)
            proc = start(cmd + extra, port, {**base_env, **env})
            try:
                run_level(port, proc.pid, args.concurrency, args.seconds, boundary, files, False)  # warm-up
                r = run_level(port, proc.pid, args.concurrency, args.seconds, boundary, files, False)
            finally:
                stop(proc)
            cpu_ms = 1000 * r["server_cpu_s"] / max(r["ok"], 1)
            table.append([peer, label, r["rps"], r["p99_us"] / 1000, cpu_ms, r["requests"] - r["ok"]])
            print(table[-1], flush=True)
    print(markdown_table(["peer", "configuration", "req/s", "p99 ms", "server CPU ms/req", "errors"], table))


if __name__ == "__main__":
    main()
