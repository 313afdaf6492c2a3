"""The served model: load, ready, infer (decode and run the graphs), postprocess.

Decoding runs in a process pool (service/workers.py). The graphs run in one of two places
(`MLA_INFERENCE`): in the server, one ONNX Runtime session per modality behind a micro-batcher
(what a GPU wants: rows that arrive together share one call); or in the decode workers, each running
the graph on what it has just decoded, so that only the outputs cross the process line (what a CPU
wants: micro-batches stay at about one row there, and the hop to the server's session thread costs
more than the call). `auto` picks the server where a session gets the CUDA provider. Fusion in numpy
by the manifest's rule, in the server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common.answer import answer_body, decide
from common.fusion import FusionParams, subset_name
from common.manifest import (
    Manifest,
    ManifestError,
    check_hashes,
    check_published,
    load_detectors,
    load_manifest,
    manifest_sha256,
    newest_version,
)
from common.media_types import DecodeError, Limits, MediaError
from common.modalities import EntryBase, kind, spec_of
from common.ood import Detector
from service.batching import MicroBatcher
from service.decoding import Graph, Source, decode_and_run, decode_file, run_graph, session_options, warm_graphs
from service.errors import InvalidMedia, InvalidRequest, from_media_error
from service.metrics import Metrics
from service.settings import Settings, usable_cpus
from service.uploads import Storage
from service.workers import DecodePool

log = logging.getLogger(__name__)
PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ModelLoadError(Exception):
    """The model repository cannot be served."""


def resolve_version_dir(model_dir: Path, version: str | None) -> Path:
    """A version folder as given, or the chosen/highest version inside a model folder."""
    if (model_dir / "manifest.json").is_file():
        return model_dir
    if version is not None:
        return model_dir / version
    try:
        return newest_version(model_dir)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc


class Outputs(NamedTuple):
    """One request's graph outputs per modality sent: logits [classes], and features [dims] where the modality has
    an out-of-distribution detector."""

    logits: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


@dataclass
class Runtime:
    """One modality's manifest entry, the provider its session got, and where it runs: a server session (the call
    that runs a batch on it, and its batcher) or the decode workers (the graph they load)."""

    entry: EntryBase
    provider: str
    run: Callable[[np.ndarray], np.ndarray] | None
    batcher: MicroBatcher | None = None
    session: Any = None  # the ONNX Runtime session: dropped, with the batcher, when the version is unloaded
    graph: Graph | None = None  # set where the decode workers run it
    width: int = 0  # of an output row: its outputs' widths summed


def make_session(
    path: Path, settings: Settings, outputs: list[str] | None = None
) -> tuple[str, Callable[[np.ndarray], np.ndarray], Any]:
    """An ONNX Runtime session for `path`: the provider it got, a call that runs a batch on it, and the session.

    The call returns the named `outputs` (default: the graph's first) side by side along axis 1, as float32
    [batch, sum of their widths]: one array per row is what the micro-batcher splits and hands back."""
    import onnxruntime as ort

    threads, usable = settings.intra_op_threads, usable_cpus()
    if not threads and usable < (os.cpu_count() or 1):
        # ONNX Runtime sizes its pool from the host's cores, blind to CPU affinity and cgroup
        # quotas: in a 4-CPU container on a 64-core node it would start dozens of threads.
        threads = usable
    opts = session_options(threads or None)
    available = set(ort.get_available_providers())
    wanted = [PROVIDER_NAMES[p] for p in settings.providers if PROVIDER_NAMES[p] in available]
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    provider_opts: list[Any] = [
        (p, {"cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1"}) if p == "CUDAExecutionProvider" else p for p in wanted
    ]
    session = ort.InferenceSession(str(path), opts, providers=provider_opts)
    provider = session.get_providers()[0]
    if wanted[0] != provider:
        log.warning("%s: %s is not usable here; running on %s", path.name, wanted[0], provider)
    input_name = session.get_inputs()[0].name
    names = outputs or [session.get_outputs()[0].name]

    def joined(arrays: list[Any]) -> np.ndarray:
        return np.asarray(arrays[0]) if len(arrays) == 1 else np.concatenate([np.asarray(a) for a in arrays], axis=1)

    if provider == "CUDAExecutionProvider":
        # IO binding: one host-to-device copy of the (uint8 or float) batch, outputs copied back once.
        def run(batch: np.ndarray) -> np.ndarray:
            binding = session.io_binding()
            binding.bind_cpu_input(input_name, np.ascontiguousarray(batch))
            for name in names:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            return joined(binding.copy_outputs_to_cpu())
    else:

        def run(batch: np.ndarray) -> np.ndarray:
            return joined(session.run(names, {input_name: batch}))

    return provider, run, session


def make_decode_pool(settings: Settings, metrics: Metrics) -> DecodePool:
    s = settings
    return DecodePool(
        s.decode_workers,
        s.decode_workers * s.decode_queue_per_worker,
        s.decode_wait_seconds,
        s.decode_timeout_seconds,
        s.decode_memory_mb * 2**20,
        metrics,
        hang_seconds=s.decode_hang_seconds,
        runs_graphs=s.inference != "server",
    )


def _ms(seconds: dict[int, float]) -> dict[int, float]:
    return {k: round(v * 1000, 1) for k, v in seconds.items()}


class ServedModel:
    """One model version: its sessions, batchers and detectors. Requests hold it (acquire/release) while they use it, so
    that a version swapped out (service.repository) is unloaded only once the last request on it has answered.

    The decode pool is the repository's, shared by every version loaded; a ServedModel built on its own (benchmarks,
    tests) starts and closes a pool of its own."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        storage: Storage | None = None,
        version_dir: Path | None = None,
        decoder: DecodePool | None = None,
    ) -> None:
        self.settings, self.metrics, self.storage = settings, metrics, storage
        self.dir = version_dir or resolve_version_dir(settings.model_dir, settings.model_version)
        self.owns_decoder = decoder is None
        self.inflight = 0  # requests holding this version (acquire .. release)
        self._idle = asyncio.Event()
        self._idle.set()
        self.unloaded = False
        self.manifest: Manifest | None = None
        self.manifest_sha256 = ""  # the manifest's, once loaded: every answer names it
        self.fusion_params = FusionParams()  # the manifest's, once loaded
        self.runtimes: dict[str, Runtime] = {}
        self.detectors: dict[str, Detector] = {}  # per modality, where the manifest has an out-of-distribution detector
        self.decoder: DecodePool | None = decoder
        self.warm = False  # sessions loaded and warmed up
        self.in_workers = False  # the decode workers run the graphs (MLA_INFERENCE), decided at load
        self.draining = False  # taken out of rotation by an operator (POST /admin/drain)
        # Read at each scrape: readiness also falls when no decode worker can be started.
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why this replica should get no traffic now; None when it should."""
        if self.draining:
            return "draining: taken out of rotation"
        if not self.warm:
            return "the model is still loading; retry shortly"
        if self.decoder is None or not self.decoder.ready:
            live = 0 if self.decoder is None else len(self.decoder.live)
            return f"{live} of {self.settings.decode_workers} decode workers are running; retry shortly"
        if self.storage is not None:
            return self.storage.problem()
        return None

    def set_draining(self, draining: bool) -> None:
        self.draining = draining

    @property
    def version(self) -> str:
        assert self.manifest is not None
        return self.manifest.version

    def acquire(self) -> ServedModel:
        """A request starts using this version (synchronous: no swap can come between the lookup and this)."""
        self.inflight += 1
        self._idle.clear()
        return self

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Until no request holds this version."""
        await self._idle.wait()

    # --- load -------------------------------------------------------------------------
    def load(self) -> None:
        try:
            manifest = load_manifest(self.dir)
        except Exception as exc:
            raise ModelLoadError(str(exc)) from exc
        bad = check_published(self.dir) + check_hashes(self.dir, manifest)
        if bad:
            raise ModelLoadError(f"{self.dir}: " + "; ".join(bad))
        try:
            self.detectors = load_detectors(self.dir, manifest)
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        for m, entry in manifest.modalities.items():
            outputs = [entry.output.name] + ([entry.features.name] if m in self.detectors and entry.features else [])
            provider, run, session = make_session(self.dir / entry.file, self.settings, outputs)
            widths = {o.name: o.shape[-1] for o in session.get_outputs()}
            if not all(isinstance(widths[name], int) for name in outputs):
                raise ModelLoadError(f"{entry.file}: the width of an output is not fixed: {widths}")
            width = sum(int(widths[name]) for name in outputs)
            self.runtimes[m] = Runtime(entry, provider, run, session=session, width=width)
            self.runtimes[m].graph = Graph(str((self.dir / entry.file).resolve()), entry.sha256, tuple(outputs))
        mode = self.settings.inference
        if mode == "auto":
            mode = "server" if any(rt.provider == "CUDAExecutionProvider" for rt in self.runtimes.values()) else "workers"
        self.in_workers = mode == "workers"
        for m, rt in self.runtimes.items():
            if self.in_workers:  # the workers load their own sessions: this one only told which provider a session gets
                rt.provider, rt.run, rt.session = "CPUExecutionProvider", None, None
            else:
                rt.graph = None
            self.metrics.model_info.labels(manifest.name, manifest.version, m, rt.provider).set(1)
            self.metrics.typicality.labels(m)  # the series exists from the start, for the dashboard and the alert
            self.metrics.queue_length.labels(m)  # at 0 with worker inference, where jobs wait in the pool's line instead
            if m in self.detectors:
                for verdict in ("true", "false"):
                    self.metrics.ood_checks.labels(m, verdict)
        names = sorted(manifest.modalities)
        for k in range(1, len(names) + 1):  # every subset's series exists from the start, at 0, for rate() and alerts
            for sub in itertools.combinations(names, k):
                self.metrics.subsets.labels(subset_name(sub))
                self.metrics.abstained.labels(subset_name(sub))
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256(self.dir)
        self.fusion_params = manifest.fusion.params()
        if self.decoder is None:
            self.decoder = make_decode_pool(self.settings, self.metrics)
        log.info(
            "loaded %s v%s from %s: %s",
            manifest.name,
            manifest.version,
            self.dir,
            {m: r.provider for m, r in self.runtimes.items()},
        )

    async def start(self) -> None:
        """Start the batchers and the decode workers, and run every batch size once (or load the graphs into every
        worker); ready afterwards."""
        s = self.settings
        assert self.decoder is not None
        for m, rt in self.runtimes.items():
            if rt.run is None:
                continue
            fill = s.batch_fill
            if fill == "auto":  # on a GPU a padded batch costs about what the real rows do; on a CPU every row costs
                fill = "pad" if rt.provider == "CUDAExecutionProvider" else "split"
            rt.batcher = MicroBatcher(
                m, rt.run, self.metrics, rt.provider, s.max_batch_size, s.max_queue_delay_ms / 1000, s.max_queue_length, fill
            )
        if self.owns_decoder:
            await self.decoder.start()  # each worker imports its decoders before it says it is ready
        if self.in_workers:
            # One job per worker at once (each takes an idle one), so that every worker running now has loaded and run
            # the graphs before the first request; a worker started later loads them on its first job.
            graphs = [
                (rt.graph, tuple(int(d) for d in rt.entry.input.shape[1:]), rt.entry.input.dtype)
                for rt in self.runtimes.values()
                if rt.graph is not None
            ]
            await asyncio.gather(*(self.decoder.run(warm_graphs, graphs) for _ in range(len(self.decoder.live))))
            log.info("%s: warmed in %d decode workers", sorted(self.runtimes), len(self.decoder.live))
        for m, rt in self.runtimes.items():
            if rt.batcher is None:
                continue
            await rt.batcher.warm(tuple(int(d) for d in rt.entry.input.shape[1:]), np.dtype(rt.entry.input.dtype))
            log.info("%s: batch sizes %s warmed (first call, ms: %s)", m, list(rt.batcher.warmed), _ms(rt.batcher.warmed))
            rt.batcher.start()
        self.warm = True

    async def close(self) -> None:
        self.warm = False
        for rt in self.runtimes.values():
            if rt.batcher is not None:
                await rt.batcher.close()
        if self.decoder is not None and self.owns_decoder:
            await self.decoder.close()

    async def unload(self, forget_metrics: bool = True) -> None:
        """Close the batchers and let go of the sessions (their memory goes back once nothing else holds them);
        `forget_metrics`: drop this version's mla_model_info series (not when another copy of it serves)."""
        await self.close()
        if self.manifest is not None and forget_metrics:
            for m, rt in self.runtimes.items():
                self.metrics.model_info.remove(self.manifest.name, self.manifest.version, m, rt.provider)
        self.runtimes = {}
        self.detectors = {}
        self.unloaded = True

    # --- preprocess ---------------------------------------------------------------------
    def limits(self, modality: str) -> Limits:
        """The bounds an upload of `modality` is decoded within (its kind's, from this server's settings)."""
        return kind(modality).limits(self.settings)

    async def infer(
        self, files: Mapping[str, Source], decoder: DecodePool, tensors: Mapping[str, np.ndarray] | None = None
    ) -> Outputs:
        """One request's outputs: its uploads decoded, and its `tensors` (inputs already in the graph's layout, no
        batch axis) taken as they are, each run through its modality's graph."""
        if not self.in_workers:
            inputs = await self.preprocess(files, decoder) if files else {}
            inputs.update(tensors or {})
            return await self.predict(inputs)
        jobs: dict[str, tuple[Any, ...]] = {}
        for m, source in files.items():
            jobs[m] = (decode_and_run, m, source, spec_of(self.runtimes[m].entry), self.limits(m), self.runtimes[m].graph)
        for m, x in (tensors or {}).items():
            jobs[m] = (run_graph, self.runtimes[m].graph, x)
        return self._split(await self._in_workers(jobs, decoder))

    async def _in_workers(self, jobs: dict[str, tuple[Any, ...]], decoder: DecodePool) -> dict[str, np.ndarray]:
        """Run each modality's job in the worker pool, all at once: {modality: its array}.

        The first failure answers the request; the other jobs are abandoned (one still waiting
        for a worker leaves the line, one running finishes within its deadline and frees its worker).
        """
        tasks = {m: asyncio.ensure_future(decoder.run_timed(*job)) for m, job in jobs.items()}
        out: dict[str, np.ndarray] = {}
        try:
            for m, task in tasks.items():
                try:
                    done = await task
                except MediaError as exc:
                    raise from_media_error(exc, m) from None
                seconds = done.seconds
                if done.inference_seconds is not None:  # the job ran the graph: one row, on the worker's CPU session
                    self.metrics.inference.labels(m, self.runtimes[m].provider).observe(done.inference_seconds)
                    self.metrics.batch_size.labels(m).observe(1)
                    self.metrics.queue.labels(m).observe(done.waited_seconds)  # its queue: the wait for a free worker
                    seconds -= done.inference_seconds
                if jobs[m][0] is not run_graph:
                    self.metrics.decode.labels(m).observe(max(seconds, 0.0))
                out[m] = done.array
        finally:
            for pending in tasks.values():
                pending.cancel()
        return out

    async def preprocess(self, files: Mapping[str, Source], decoder: DecodePool) -> dict[str, np.ndarray]:
        """Decode each (modality -> file) in the worker pool, all at once, each within the limits: the graphs' inputs."""
        jobs = {m: (decode_file, m, source, spec_of(self.runtimes[m].entry), self.limits(m)) for m, source in files.items()}
        return await self._in_workers(jobs, decoder)

    # --- predict and postprocess -----------------------------------------------------------
    async def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """One request's outputs for inputs already in each graph's layout (no batch axis)."""
        if self.in_workers:
            assert self.decoder is not None
            jobs = {m: (run_graph, self.runtimes[m].graph, x) for m, x in inputs.items()}
            return self._split(await self._in_workers(jobs, self.decoder))
        rows = await asyncio.gather(*(self.runtimes[m].batcher.submit(x) for m, x in inputs.items()))  # type: ignore[union-attr]
        return self._split(dict(zip(inputs, rows, strict=True)))

    def _split(self, rows: dict[str, np.ndarray]) -> Outputs:
        """Each modality's output row cut into its logits and, where it has a detector, its features."""
        assert self.manifest is not None
        k = len(self.manifest.labels)
        out = Outputs({}, {})
        for m, row in rows.items():
            # Finite input can still overflow (float samples far outside [-1, 1]): never let a NaN
            # reach the answer or the entropy histogram, whose running sum it would spoil for good.
            if not np.isfinite(row).all():
                raise InvalidMedia(f"{m}: the model's output is not finite for this input (sample values out of range?)")
            if row.shape != (self.runtimes[m].width,):  # a worker parses hostile media: what it sends is checked as data
                raise DecodeError(f"{m}: the graph's outputs came back as {list(row.shape)}, not [{self.runtimes[m].width}]")
            out.logits[m] = row[:k]
            if m in self.detectors:
                out.features[m] = row[k:]
        return out

    def postprocess(self, outputs: Outputs, min_confidence: float | None = None) -> dict[str, Any]:
        """One request's answer (common.answer.decide): modalities out of distribution left out of the fusion, the
        manifest's calibrated rule over the rest, abstained below `min_confidence` (default: the manifest's threshold
        for the set fused) or when no modality sent is in distribution."""
        assert self.manifest is not None
        fusion, params = self.manifest.fusion, self.fusion_params
        logits = outputs.logits
        a = decide(
            params,
            fusion.abstention.min_confidence,
            self.detectors,
            {m: z[None] for m, z in logits.items()},  # decide widens logits to float64, and the detectors features
            {m: f[None] for m, f in outputs.features.items()},
            min_confidence=min_confidence,
        )
        body = answer_body(self.manifest, self.manifest_sha256, params, self.detectors, a)
        sent = subset_name(list(logits))
        for m, d in body["modalities"].items():
            self.metrics.entropy.labels(m).observe(d["entropy"])
            self.metrics.weight.labels(m).observe(d["weight"])
            if d["typicality"] is not None:
                self.metrics.typicality.labels(m).observe(d["typicality"])
            if d["in_distribution"] is not None:
                self.metrics.ood_checks.labels(m, "true" if d["in_distribution"] else "false").inc()
        self.metrics.subsets.labels(sent).inc()
        if body["abstained"]:
            self.metrics.abstained.labels(sent).inc()
        return body

    def modalities(self) -> list[str]:
        """The inputs this model takes, in its manifest's order."""
        return list(self.runtimes)

    def check_modalities(self, wanted: set[str]) -> None:
        missing = sorted(wanted - set(self.runtimes))
        if missing:
            raise InvalidRequest(f"this model has no {', '.join(missing)} input; it takes {', '.join(sorted(self.runtimes))}")
