"""Fuzz a live `mla serve`: mutated real media, hostile files, broken multipart, the same as Open Inference Protocol
requests and broken protocol bodies, then schemathesis (every documented route, /v2 included).

    python -m benchmarks.fuzz [--model models/default] [--requests 10000] [--seconds 300]

Fails (exit 1) on any answer >= 500 other than 503, any request that hangs past the
server's request timeout, any file left in the upload folder, or a process-tree RSS above
the stated bound, or an upload folder above its spool budget (MLA_MAX_SPOOL_BYTES; sampled every
50 ms). The RSS bound follows from the settings: the server's own RSS once ready plus
`--main-growth-mb`, plus per decode worker its RSS once ready plus the address space it may
add (MLA_DECODE_MEMORY_MB, enforced with RLIMIT_AS). Answers >= 500 are saved under --out
with the request that caused them, to become regression tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks import live
from benchmarks.fuzz_corpus import INFER, Request, build_seeds, draw, hostile_seeds
from benchmarks.report import markdown_table, write

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
REQUEST_TIMEOUT = 30.0  # the server's MLA_REQUEST_TIMEOUT_SECONDS during the run
DECODE_MEMORY_MB = 512
SERVER_ENV = {
    "MLA_MAX_UPLOAD_BYTES": str(4 * 2**20),
    "MLA_DECODE_WORKERS": "2",
    "MLA_DECODE_MEMORY_MB": str(DECODE_MEMORY_MB),
    "MLA_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
    "MLA_DECODE_TIMEOUT_SECONDS": "10",
    # Files past 256 KiB go to disk, within a budget of 8 MiB: both paths, and the budget, under fire.
    "MLA_MEMORY_UPLOAD_BYTES": str(256 * 2**10),
    "MLA_MAX_SPOOL_BYTES": str(8 * 2**20),
    "MLA_ADMIN_KEY": "fuzz",  # the repository routes (load, unload, index) are fuzzed too
}


def folder_bytes(root: Path) -> int:
    """Bytes the files under `root` take on disk now (os.walk skips what is removed while it walks)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


async def _send(client: httpx.AsyncClient, url: str, req: Request, model: str) -> int:
    route = f"/v2/models/{model}/infer" if req.route == INFER else req.route
    if req.raw is not None:
        r = await client.post(f"{url}{route}", content=req.raw, headers=req.headers)
    else:
        files = [(fld, (name, data)) for fld, name, data in req.parts]
        r = await client.post(f"{url}{route}", files=files, data=req.form or None)
    if r.status_code == 503 and "retry-after" not in r.headers:
        return 599  # a 503 must say when to come back
    if r.status_code >= 400:
        try:
            shaped = "error" in r.json()
        except ValueError:
            shaped = False
        if not shaped:
            return 598  # every error has the one JSON shape
    return r.status_code


async def _blast(
    url: str, requests: int, seconds: float, concurrency: int, seed: int, drawer: Callable[[random.Random], Request], out: Path
) -> dict[str, Any]:
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["name"]
    statuses: Counter[int] = Counter()
    by_kind: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    rng = random.Random(seed)
    sent = 0
    stop = time.monotonic() + seconds
    lock = asyncio.Lock()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while True:
            async with lock:
                if sent >= requests or time.monotonic() > stop:
                    return
                n, req = sent, drawer(rng)
                sent += 1
            t0 = time.monotonic()
            try:
                status = await asyncio.wait_for(_send(client, url, req, model), REQUEST_TIMEOUT + 15)
            except TimeoutError:
                status = 0  # hung past the request timeout
            except httpx.HTTPError as exc:
                # The server may close a connection it refuses (413 mid-upload); anything else is a fault.
                status = 413 if req.what.endswith("over_the_limit") else -1
                if status == -1:
                    log.warning("request %d (%s): %r", n, req.what, exc)
            statuses[status] += 1
            by_kind[req.what.split(":")[0]] += 1
            if status < 100 or (status >= 500 and status != 503):
                failures.append({"n": n, "what": req.what, "status": status, "seconds": round(time.monotonic() - t0, 2)})
                _save(out / "fuzz-failures" / f"{n:06d}", req)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT + 30, limits=limits) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    return {
        "requests": sent,
        "seconds": round(elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "kinds": dict(by_kind.most_common()),
        "failures": failures,
    }


def _save(folder: Path, req: Request) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "request.json").write_text(json.dumps({"what": req.what, "form": req.form, "headers": req.headers}))
    if req.raw is not None:
        (folder / "body").write_bytes(req.raw)
    for i, (fld, name, data) in enumerate(req.parts):
        (folder / f"{i}-{fld}-{Path(name).name or 'upload'}").write_bytes(data)


def schemathesis(url: str, examples: int, seed: int, budget: float) -> dict[str, Any]:
    """schemathesis against /openapi.json: every documented route, positive and negative cases, all checks."""
    exe = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(exe),
        "--config-file",
        str(Path(__file__).resolve().parent / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        f"--seed={seed}",
        # One worker: with two threads, hypothesis's ast.parse of strategy lambdas meets CPython 3.11's thread-unsafe
        # AST recursion counter (python/cpython#106905) and the run dies with a SystemError that is not the server's.
        "--workers",
        "1",
        "--request-timeout",
        str(REQUEST_TIMEOUT + 10),
        "--no-color",
    ]
    served = httpx.get(f"{url}/v1/models", timeout=10).json()
    env = {
        **os.environ,
        "MLA_FUZZ_MODEL": served["name"],
        "MLA_FUZZ_VERSION": served["version"],
        "MLA_FUZZ_ADMIN_KEY": SERVER_ENV["MLA_ADMIN_KEY"],
    }
    try:
        with tempfile.TemporaryDirectory() as cwd:  # its cache folder lands there, not in the repository
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=cwd, env=env)
    except subprocess.TimeoutExpired as exc:
        return {"ok": False, "summary": f"schemathesis ran past {budget:.0f} s", "output": str(exc.stdout or "")[-4000:]}
    return {"ok": proc.returncode == 0, "summary": _summary(proc.stdout), "output": proc.stdout[-6000:] + proc.stderr[-2000:]}


def _summary(output: str) -> str:
    """schemathesis's count of cases ("319 generated, 319 passed") and its closing line."""
    lines = [line.strip() for line in output.strip().splitlines()]
    cases = next((line for line in lines if re.match(r"\d+ generated", line)), "")
    return "; ".join(part for part in (cases, (lines or [""])[-1].strip("= ")) if part)


class _Watch:
    """A live server under fuzz: its process tree's RSS and its upload folder sampled every 50 ms, and the RSS bound
    its settings imply (the server's RSS once ready plus `main_growth_mb`, per decode worker its RSS once ready plus
    the address space it may add, and a replacement worker starting while the old one exits)."""

    def __init__(self, model: Path, work: Path, main_growth_mb: int) -> None:
        self.srv = live.start(model, work, **SERVER_ENV)
        self.peak = self.peak_uploads = 0
        main_rss = live.psutil.Process(self.srv.proc.pid).memory_info().rss
        workers = self.srv.decode_workers()
        self.bound = main_rss + main_growth_mb * 2**20 + sum(w.memory_info().rss + DECODE_MEMORY_MB * 2**20 for w in workers)
        self.bound += 64 * 2**20
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        ticks = 0
        while self.sampling:
            if ticks % 5 == 0:
                self.peak = max(self.peak, self.srv.tree_rss())
            self.peak_uploads = max(self.peak_uploads, folder_bytes(self.srv.uploads))
            ticks += 1
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        """Stop sampling and the server; what it showed, with the problems found."""
        try:
            alive = self.srv.proc.poll() is None and httpx.get(f"{self.srv.url}/readyz", timeout=10).status_code == 200
            restarts = httpx.get(f"{self.srv.url}/metrics", timeout=10).text.count("mla_decode_worker_restarts_total{")
        finally:
            self.sampling = False
            self.sampler.join(5)
            left = self.srv.leftovers()
            live.stop(self.srv)
        figures = {
            "alive_and_ready_after": alive,
            "restart_reasons_seen": restarts,
            "upload_leftovers": left,
            "peak_tree_rss_mb": round(self.peak / 2**20, 1),
            "rss_bound_mb": round(self.bound / 2**20, 1),
            "peak_upload_folder_mb": round(self.peak_uploads / 2**20, 2),
            "upload_bound_mb": round(int(SERVER_ENV["MLA_MAX_SPOOL_BYTES"]) / 2**20, 2),
        }
        problems = []
        if left:
            problems.append(f"{len(left)} files left in the upload folder")
        if self.peak > self.bound:
            problems.append(
                f"process-tree RSS peaked at {self.peak / 2**20:.0f} MB, above the bound of {self.bound / 2**20:.0f} MB"
            )
        if self.peak_uploads > int(SERVER_ENV["MLA_MAX_SPOOL_BYTES"]):
            problems.append(f"the upload folder peaked at {self.peak_uploads / 2**20:.1f} MB, above its budget")
        if not alive:
            problems.append("the server was not alive and ready afterwards")
        return figures | {"problems": problems}


def run(
    model: Path,
    requests: int,
    seconds: float,
    concurrency: int = 8,
    seed: int = 0,
    schema_examples: int = 40,
    main_growth_mb: int = 400,
    out: Path | None = None,
    still_requests: int = 0,
) -> dict[str, Any]:
    """Fuzz `model`; then, with `still_requests`, a small image + text model (benchmarks.fuzz_still) with that many
    requests of images and texts, hostile and mutated."""
    work = Path(tempfile.mkdtemp(prefix="mla-fuzz-"))
    out = out or work
    try:
        seeds = build_seeds(work / "seeds")
        bad = hostile_seeds(work)
        watch = _Watch(model, work / "server", main_growth_mb)
        try:
            report = asyncio.run(_blast(watch.srv.url, requests, seconds, concurrency, seed, lambda r: draw(r, seeds, bad), out))
            schema = schemathesis(watch.srv.url, schema_examples, seed, budget=max(60.0, seconds))
        finally:
            figures = watch.finish()
        report |= {"seed": seed, "concurrency": concurrency, "seeds": len(seeds) + len(bad), "schemathesis": schema}
        report |= figures
        problems = report.pop("problems")
        if report["failures"]:
            problems.insert(0, f"{len(report['failures'])} answers >= 500 other than 503, hangs or dropped connections")
        if not schema["ok"]:
            problems.insert(1, f"schemathesis failed: {schema['summary']}")
        if still_requests:
            still = _still_phase(work, still_requests, max(30.0, seconds / 3), concurrency, seed, main_growth_mb, out)
            report["image_text"] = still
            problems += [f"image + text model: {p}" for p in still["problems"]]
        report["problems"] = problems
        return report
    finally:
        if out != work:
            shutil.rmtree(work, ignore_errors=True)


def _still_phase(
    work: Path, requests: int, seconds: float, concurrency: int, seed: int, main_growth_mb: int, out: Path
) -> dict[str, Any]:
    """The image + text model under the still-input corpus (benchmarks.fuzz_still)."""
    from benchmarks import fuzz_still

    repo = fuzz_still.tiny_model(work / "still")
    good, bad = fuzz_still.seeds()
    watch = _Watch(repo, work / "still-server", main_growth_mb)
    try:
        report = asyncio.run(
            _blast(
                watch.srv.url, requests, seconds, concurrency, seed, lambda r: fuzz_still.draw(r, good, bad), out / "image-text"
            )
        )
    finally:
        figures = watch.finish()
    problems = figures.pop("problems")
    if report["failures"]:
        problems.insert(0, f"{len(report['failures'])} answers >= 500 other than 503, hangs or dropped connections")
    return report | figures | {"seeds": len(good) + len(bad), "problems": problems}


def _phase_table(r: dict[str, Any]) -> str:
    server_errors = sum(v for k, v in r["statuses"].items() if int(k) >= 500 and k != "503")
    return markdown_table(
        [
            "answers",
            *r["statuses"],
            ">= 500 but 503",
            "hangs / dropped",
            "files left",
            "peak RSS MB",
            "RSS bound MB",
            "peak upload folder MB",
            "its bound MB",
        ],
        [
            [
                "count",
                *r["statuses"].values(),
                server_errors,
                r["statuses"].get("0", 0) + r["statuses"].get("-1", 0),
                len(r["upload_leftovers"]),
                r["peak_tree_rss_mb"],
                r["rss_bound_mb"],
                r["peak_upload_folder_mb"],
                r["upload_bound_mb"],
            ]
        ],
    )


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Fuzz: {r['requests']} requests at concurrency {r['concurrency']}, seed {r['seed']} ({r['seconds']:.0f} s)",
        "",
        _phase_table(r),
        "",
        f"schemathesis against /openapi.json, all checks: {r['schemathesis']['summary']}.",
    ]
    still = r.get("image_text")
    if still:
        lines += [
            "",
            f"A model with image and text inputs (benchmarks/fuzz_still.py): {still['requests']} requests of mutated and "
            f"hostile PNG, JPEG, WebP and other images and texts, {still['seconds']:.0f} s:",
            "",
            _phase_table(still),
        ]
    lines += ["", f"Problems: {'; '.join(r['problems']) or 'none'}."]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schema-examples", type=int, default=60)
    ap.add_argument("--still-requests", type=int, default=3000, help="requests to the image + text model (0: none)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fuzz")
    args = ap.parse_args()
    report = run(
        args.model,
        args.requests,
        args.seconds,
        args.concurrency,
        args.seed,
        args.schema_examples,
        out=args.out,
        still_requests=args.still_requests,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("failures", "schemathesis", "image_text")}
    log.info(json.dumps(summary, indent=2))
    log.info("schemathesis: %s", report["schemathesis"]["summary"])
    if report["requests"] < args.requests:
        report["problems"].append(f"only {report['requests']} of {args.requests} requests were sent in {args.seconds:g} s")
    write(
        "fuzz",
        {k: v for k, v in report.items() if k != "schemathesis"} | {"schemathesis": report["schemathesis"]["summary"]},
        markdown(report),
    )
    if report["problems"]:
        log.error("FAILED: %s", "; ".join(report["problems"]))
        sys.exit(1)
    log.info("passed: %d requests, no answer >= 500 but 503, nothing left behind", report["requests"])


if __name__ == "__main__":
    main()
