"""Inference in the decode workers (MLA_INFERENCE=workers, the default on a CPU): the same answers as the server's
sessions give, the sessions a worker keeps bounded, and a worker started after a crash serving at once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import decoding
from service.decoding import SESSIONS_KEPT, Graph, worker_session
from service.metrics import Metrics
from service.model import ServedModel
from service.settings import Settings


def _model(tiny_repo: Path, tmp_path: Path, inference: str) -> ServedModel:
    settings = Settings(model_dir=tiny_repo, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path, inference=inference)
    model = ServedModel(settings, Metrics())
    model.load()
    return model


def _requests(demo_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Real clips of the demo data: pairs, audio alone, video alone, as files and as bytes."""
    rows = [r for r in demo_rows if r["audio"] and r["video"]][:4]
    out: list[dict[str, Any]] = []
    for r in rows:
        audio, video = Path(r["audio"]), Path(r["video"])
        out += [{"audio": audio, "video": video}, {"audio": (audio.name, audio.read_bytes())}, {"video": video}]
    return out


def test_worker_and_server_inference_give_the_same_answers(
    tiny_repo: Path, tmp_path: Path, demo_rows: list[dict[str, str]]
) -> None:
    """Every answer's label, abstention, OOD verdicts and probabilities agree between the two placements (float32
    tolerance: one thread against the server's pool), for uploads and for tensors sent as they are."""

    async def answers(inference: str) -> tuple[bool, list[dict[str, Any]]]:
        model = _model(tiny_repo, tmp_path, inference)
        await model.start()
        try:
            assert model.decoder is not None
            bodies = [model.postprocess(await model.infer(files, model.decoder)) for files in _requests(demo_rows)]
            zeros = {
                m: np.zeros([int(d) for d in rt.entry.input.shape[1:]], rt.entry.input.dtype) for m, rt in model.runtimes.items()
            }
            bodies.append(model.postprocess(await model.infer({}, model.decoder, zeros)))
            return model.in_workers, bodies
        finally:
            await model.close()

    in_workers, ours = asyncio.run(answers("workers"))
    in_server, theirs = asyncio.run(answers("server"))
    assert in_workers
    assert not in_server
    assert len(ours) == len(theirs) == 13
    for a, b in zip(ours, theirs, strict=True):
        assert (a["label"], a["abstained"], a["abstain_reason"], a["fused_modalities"]) == (
            b["label"],
            b["abstained"],
            b["abstain_reason"],
            b["fused_modalities"],
        )
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-4
        for m, d in a["modalities"].items():
            assert d["in_distribution"] == b["modalities"][m]["in_distribution"]
            if d["ood_score"] is not None:
                assert abs(d["ood_score"] - b["modalities"][m]["ood_score"]) < 1e-4


def test_a_worker_keeps_a_bounded_number_of_sessions_least_recently_used_out(tiny_repo: Path, tmp_path: Path) -> None:
    model = _model(tiny_repo, tmp_path, "workers")
    graph = next(rt.graph for rt in model.runtimes.values() if rt.graph is not None)
    decoding._sessions.clear()
    try:
        # one file under SESSIONS_KEPT + 2 keys: as many versions' graphs as a worker may meet over swaps
        keys = [dataclasses.replace(graph, sha256=f"{i:064x}") for i in range(SESSIONS_KEPT + 2)]
        first = worker_session(keys[0])
        for key in keys[1:SESSIONS_KEPT]:
            worker_session(key)
        assert worker_session(keys[0]) is first  # used again: kept, and now the most recent
        for key in keys[SESSIONS_KEPT:]:
            worker_session(key)
        assert len(decoding._sessions) == SESSIONS_KEPT
        assert keys[0] in decoding._sessions  # refreshed above, so not the oldest
        assert keys[1] not in decoding._sessions
        assert keys[2] not in decoding._sessions
    finally:
        decoding._sessions.clear()


def test_a_worker_started_after_a_crash_loads_the_graphs_on_its_first_job(
    tiny_repo: Path, tmp_path: Path, clean_train_row: dict[str, str]
) -> None:
    """The worker that ran the warm-up is killed; its replacement never ran it, and answers the next request as the
    first worker did."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], int, int]:
        model = _model(tiny_repo, tmp_path, "workers")
        await model.start()
        try:
            pool = model.decoder
            assert pool is not None
            files = {"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}
            before = model.postprocess(await model.infer(files, pool))
            (first,) = pool.pids()
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while pool.pids() == [first] or not pool.ready:  # until the pool has noticed and replaced it
                assert time.monotonic() < deadline, "the killed worker was never replaced"
                await asyncio.sleep(0.05)
            (second,) = pool.pids()
            after = model.postprocess(await model.infer(files, pool))
            return before, after, first, second
        finally:
            await model.close()

    before, after, first, second = asyncio.run(scenario())
    assert second != first
    assert after["label"] == before["label"]
    assert after["probabilities"] == pytest.approx(before["probabilities"], abs=1e-6)


def test_a_graph_path_is_absolute(tiny_repo: Path, tmp_path: Path) -> None:
    """A worker's working directory is not the server's concern: the graphs it is sent name absolute paths."""
    model = _model(tiny_repo, tmp_path, "workers")
    graphs = [rt.graph for rt in model.runtimes.values()]
    assert graphs
    assert all(isinstance(g, Graph) and Path(g.path).is_absolute() and Path(g.path).is_file() for g in graphs)
