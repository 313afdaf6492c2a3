"""Start the peer servers from their own venv, and check their answers equal the service's.

Run from the project's venv (benchmarks/serve_load.py, tests/benchmarks/test_peers.py): the peers themselves run
with .venv/peers/bin/python, whose pins (litserve, bentoml) would clash with the project's locks.

Equality: the same labels (the answer's and every modality's), the same abstention and fused set, and every
probability within TOLERANCE. Every server runs the same ONNX graphs with the same ONNX Runtime build on the same
decoded arrays, and the answer is computed in float64 from the graphs' float32 outputs, so two honest servers
differ at most by float32 rounding in the graphs (a different summation order across thread counts or batch
sizes). TOLERANCE is half of float32's significand, sqrt(float32 eps) = 2**-11.5 ~ 3.5e-4: the usual bound for
float32 results computed along different paths, far above reordering noise (~1e-6 here) and far below what doing
less work shows (a skipped modality or detector, or another calibration, moves probabilities by 1e-2 and more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PEERS_VENV = ROOT / ".venv/peers"
PEERS = ("litserve", "bentoml")
TOLERANCE = math.sqrt(float(np.finfo(np.float32).eps))


def peers_python() -> Path | None:
    """The peers' interpreter, or None where .venv/peers has not been made (`requirements/peers.in`)."""
    python = PEERS_VENV / "bin/python"
    return python if python.is_file() else None


def command(peer: str, model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that serve `model` at 127.0.0.1:`port` with `peer`.

    Each peer's processes run one BLAS thread, as the service's own does (service.main): they answer with the same
    common.answer, whose kNN multiplies one query by a bank, and OpenBLAS's threads, spinning between requests above a
    bank of about 4,000 rows, would cost them the CPU they cost the service (docs/decisions/2026-12-07-one-blas-thread.md).
    """
    one_thread = {"OPENBLAS_NUM_THREADS": "1"}
    python = peers_python()
    if python is None:
        raise FileNotFoundError(
            f"no {PEERS_VENV}: python3 -m venv {PEERS_VENV} && {PEERS_VENV}/bin/pip install -r requirements/peers.in"
        )
    if peer == "litserve":
        return [str(python), "-m", "benchmarks.peers.litserve_server", str(model), str(port)], one_thread
    if peer == "bentoml":
        cmd = [str(PEERS_VENV / "bin/bentoml"), "serve", "benchmarks.peers.bentoml_service:Front"]
        return [*cmd, "--host", "127.0.0.1", "--port", str(port)], {**one_thread, "PEERS_MODEL_DIR": str(model.resolve())}
    raise ValueError(f"unknown peer {peer!r}: one of {', '.join(PEERS)}")


@dataclass(frozen=True)
class Request:
    """One request of the benchmark's mix: a pair, or one of its files alone."""

    audio: Path | None
    video: Path | None

    @property
    def kind(self) -> str:
        return "+".join(m for m, p in (("audio", self.audio), ("video", self.video)) if p is not None)

    def files(self) -> dict[str, tuple[str, bytes, str]]:
        out = {}
        for field, path, mime in (("audio", self.audio, "audio/wav"), ("video", self.video, "video/mp4")):
            if path is not None:
                out[field] = (path.name, path.read_bytes(), mime)
        return out


def mix(pairs: Iterable[tuple[Path, Path]]) -> list[Request]:
    """The request mix: for each (wav, mp4) in turn, the pair, the wav alone, the mp4 alone (a third each)."""
    return [r for a, v in pairs for r in (Request(a, v), Request(a, None), Request(None, v))]


def answer(url: str, request: Request, client: httpx.Client) -> dict[str, Any]:
    response = client.post(f"{url}/v1/predict", files=request.files(), timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code} to {request}: {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[list[str], float]:
    """What differs between two answers to one request, and the largest probability difference."""
    problems: list[str] = []
    for key in ("label", "abstained", "fused_modalities"):
        if ours.get(key) != theirs.get(key):
            problems.append(f"{key}: ours {ours.get(key)!r}, theirs {theirs.get(key)!r}")
    pairs = [("probabilities", ours.get("probabilities") or {}, theirs.get("probabilities") or {})]
    if set(ours.get("modalities") or {}) != set(theirs.get("modalities") or {}):
        problems.append(
            f"modalities: ours {sorted(ours.get('modalities') or {})}, theirs {sorted(theirs.get('modalities') or {})}"
        )
    for m, detail in (ours.get("modalities") or {}).items():
        other = (theirs.get("modalities") or {}).get(m, {})
        if detail.get("label") != other.get("label"):
            problems.append(f"modalities.{m}.label: ours {detail.get('label')!r}, theirs {other.get('label')!r}")
        pairs.append((f"modalities.{m}.probabilities", detail.get("probabilities") or {}, other.get("probabilities") or {}))
    worst = 0.0
    for where, p, q in pairs:
        if set(p) != set(q):
            problems.append(f"{where}: labels {sorted(p)} vs {sorted(q)}")
            continue
        for label, value in p.items():
            diff = abs(float(value) - float(q[label]))
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                problems.append(f"{where}[{label}]: ours {value}, theirs {q[label]} (|diff| {diff:.2e} > {TOLERANCE:.2e})")
    return problems, worst


def check_answers(ours: str, peers: dict[str, str], sample: list[Request]) -> dict[str, dict[str, Any]]:
    """Each peer's answers to `sample` (sent one at a time) against ours: the requests checked, the largest
    probability difference, and what differed (empty: equal)."""
    report: dict[str, dict[str, Any]] = {}
    with httpx.Client() as client:
        expected = [answer(ours, r, client) for r in sample]
        for name, url in peers.items():
            problems, worst = [], 0.0
            for r, want in zip(sample, expected, strict=True):
                found, diff = differences(want, answer(url, r, client))
                worst = max(worst, diff)
                problems += [f"{r.kind} {(r.audio or r.video).name}: {p}" for p in found]  # type: ignore[union-attr]
            report[name] = {"checked": len(sample), "max_prob_diff": worst, "tolerance": TOLERANCE, "problems": problems}
    return report
