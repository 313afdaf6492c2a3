"""The in-process cost of the service's work, for benchmarks/serve_load.py's overhead ratio.

The same functions the service runs, in this process, timed in CPU seconds (time.process_time
counts every thread, ONNX Runtime's included): the decode jobs exactly as a decode worker
runs them, and each modality's session, built with the service's options, at every batch size
the service ran.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.media import AudioSpec, VideoSpec
from common.modalities.audio import AudioEntry
from common.modalities.video import VideoEntry
from service.decoding import Graph, decode_file, worker_session
from service.metrics import Metrics
from service.model import ServedModel
from service.settings import Settings


def served_batches(port: int) -> dict[str, dict[int, int]]:
    """Session calls per batch size and modality so far, from the service's `mla_batch_size`
    histogram (its bounds are the bucket sizes, so each bin is one size); {} for a server without it."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    cumulative: dict[str, dict[int, float]] = {}
    for line in text.splitlines():
        if not line.startswith("mla_batch_size_bucket{"):
            continue
        labels, value = line[len("mla_batch_size_bucket{") :].rsplit("} ", 1)
        fields = dict(kv.split("=", 1) for kv in labels.split(","))
        le = fields["le"].strip('"')
        if le != "+Inf":
            cumulative.setdefault(fields["modality"].strip('"'), {})[int(float(le))] = float(value)
    out: dict[str, dict[int, int]] = {}
    for m, cum in cumulative.items():
        prev = 0.0
        out[m] = {}
        for size in sorted(cum):
            out[m][size] = round(cum[size] - prev)
            prev = cum[size]
    return out


class InProcess:
    """The served model loaded here (sessions with the service's options; no server, no workers)."""

    def __init__(self, model_dir: Path, max_batch: int) -> None:
        self.model = ServedModel(Settings(model_dir=model_dir, providers=["cpu"], max_batch_size=max_batch), Metrics())
        self.model.load()
        self.runs = {m: rt.run or _worker_run(rt.graph) for m, rt in self.model.runtimes.items()}

    def decode_cpu(self, pairs: list[tuple[Path, Path]], repeats: int = 3) -> dict[str, float]:
        """CPU seconds per clip, per modality: the decode jobs as a worker runs them (median of passes)."""
        rt = self.model.runtimes
        a, v = rt["audio"].entry, rt["video"].entry
        assert isinstance(a, AudioEntry)
        assert isinstance(v, VideoEntry)
        audio_spec = AudioSpec(a.sample_rate, a.clip_samples)
        video_spec = VideoSpec(v.frames, v.height, v.width)
        limits = {m: self.model.limits(m) for m in ("audio", "video")}
        passes: dict[str, list[float]] = {"audio": [], "video": []}
        for _ in range(repeats + 1):
            t0 = time.process_time()
            for audio, _ in pairs:
                decode_file("audio", audio, audio_spec, limits["audio"])
            passes["audio"].append((time.process_time() - t0) / len(pairs))
            t0 = time.process_time()
            for _, video in pairs:
                decode_file("video", video, video_spec, limits["video"])
            passes["video"].append((time.process_time() - t0) / len(pairs))
        return {m: statistics.median(p[1:]) for m, p in passes.items()}  # the first pass warms caches

    def inputs(self, pairs: list[tuple[Path, Path]], count: int) -> dict[str, np.ndarray]:
        rt = self.model.runtimes
        a, v = rt["audio"].entry, rt["video"].entry
        assert isinstance(a, AudioEntry)
        assert isinstance(v, VideoEntry)
        limits = {m: self.model.limits(m) for m in ("audio", "video")}
        # the decode jobs return the array itself (service/wire.py carries it as one)
        audio = [decode_file("audio", p, AudioSpec(a.sample_rate, a.clip_samples), limits["audio"]) for p, _ in pairs[:count]]
        video = [decode_file("video", p, VideoSpec(v.frames, v.height, v.width), limits["video"]) for _, p in pairs[:count]]
        reps = -(-count // len(audio))
        return {"audio": np.stack((audio * reps)[:count]), "video": np.stack((video * reps)[:count])}

    def inference_cpu(
        self, pairs: list[tuple[Path, Path]], sizes: list[int], seconds: float = 1.0
    ) -> dict[str, dict[int, float]]:
        """CPU seconds per session call at each batch size, per modality (real decoded inputs)."""
        data = self.inputs(pairs, max(sizes))
        out: dict[str, dict[int, float]] = {}
        for m, run in self.runs.items():
            out[m] = {}
            for size in sizes:
                batch = np.ascontiguousarray(data[m][:size])
                run(batch)  # warm this shape
                calls, t0, wall = 0, time.process_time(), time.perf_counter()
                while calls < 3 or time.perf_counter() - wall < seconds:
                    run(batch)
                    calls += 1
                out[m][size] = (time.process_time() - t0) / calls
        return out


def measure(model_dir: Path, max_batch: int, pairs: list[tuple[Path, Path]], sizes: list[int]) -> dict[str, Any]:
    """{"decode_s": per modality, "inference_s": per modality and batch size}: CPU seconds, in this process."""
    cost = InProcess(model_dir, max_batch)
    return {"decode_s": cost.decode_cpu(pairs), "inference_s": cost.inference_cpu(pairs, sizes)}


def _worker_run(graph: Graph | None) -> Callable[[np.ndarray], Any]:
    """A batch through the session a decode worker builds for `graph`."""
    assert graph is not None
    loaded = worker_session(graph)
    return lambda batch: loaded.session.run(list(graph.outputs), {loaded.input_name: batch})


def inference_per_request(batches: dict[str, dict[int, int]], cost: dict[str, dict[int, float]]) -> float:
    """CPU seconds of inference per request at the batch sizes the service ran (each modality's
    calls of size b cost what a call of size b costs here, shared by its b rows)."""
    total = 0.0
    for m, calls in batches.items():
        rows = sum(n * b for b, n in calls.items())
        if rows:
            total += sum(n * cost[m][b] for b, n in calls.items() if n) / rows
    return total
