"""Bucketed batches: every bucket size runs before the service says it is ready, and padding
rows never reach an answer (in process, then through a real server that pads)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.metrics import Metrics
from service.model import ServedModel
from service.settings import Settings
from tests.servers import Server, start_server, stop_server


@pytest.mark.parametrize("max_batch", [16, 12])
def test_every_bucket_is_warmed_before_ready(tiny_repo: Path, tmp_path: Path, max_batch: int) -> None:
    settings = Settings(
        model_dir=tiny_repo, providers=["cpu"], decode_workers=1, max_batch_size=max_batch, tmp_dir=tmp_path, inference="server"
    )
    model = ServedModel(settings, Metrics())
    model.load()
    calls: list[tuple[str, int, bool]] = []  # (modality, batch size, ready at the time)
    for m, rt in model.runtimes.items():
        session = rt.run
        assert session is not None  # server inference: each modality has its session's call

        def run(batch: np.ndarray, m: str = m, session: Callable[[np.ndarray], np.ndarray] = session) -> np.ndarray:
            calls.append((m, len(batch), model.ready))
            return session(batch)

        rt.run = run

    async def main() -> bool:
        await model.start()
        ready = model.ready
        await model.close()
        return ready

    assert asyncio.run(main())
    buckets = [1, 2, 4, 8, 16] if max_batch == 16 else [1, 2, 4, 8, 12]
    for m in model.runtimes:
        assert sorted(n for mm, n, _ in calls if mm == m) == buckets
    assert not any(ready for _, _, ready in calls)  # all of them before ready


@pytest.fixture(scope="module")
def padding(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that pads, and waits 300 ms to grow a batch, so that 3 concurrent requests share one of 4."""
    srv = start_server(
        tiny_repo,
        tmp_path_factory.mktemp("padding"),
        MLA_INFERENCE="server",
        MLA_BATCH_FILL="pad",
        MLA_MAX_QUEUE_DELAY_MS="300",
        MLA_MAX_BATCH_SIZE="8",
    )
    yield srv
    stop_server(srv)


def padded_rows(srv: Server) -> float:
    total = 0.0
    for line in httpx.get(f"{srv.url}/metrics").text.splitlines():
        if line.startswith("mla_batch_padded_rows_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_padding_rows_never_reach_an_answer(padding: Server, demo_rows: list[dict[str, str]]) -> None:
    info = httpx.get(f"{padding.url}/v1/models").json()["batching"]
    for m in ("audio", "video"):
        assert info[m]["buckets"] == [1, 2, 4, 8]
        assert info[m]["warmed"] == [1, 2, 4, 8]
        assert info[m]["fill"] == "pad"
    rows: list[dict[str, str]] = []
    for r in demo_rows:  # three clips of three classes, so that a row mix-up would show
        if r["split"] == "test" and not r["corrupted"] and r["label"] not in {x["label"] for x in rows}:
            rows.append(r)
    rows = rows[:3]
    files = [{"audio": Path(r["audio"]), "video": Path(r["video"])} for r in rows]
    alone = [padding.post(f).json() for f in files]  # batches of 1: no padding
    assert len({a["label"] for a in alone}) > 1
    before = padded_rows(padding)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        together = [r.json() for r in pool.map(padding.post, files)]
    assert padded_rows(padding) > before  # 3 rows went out as a batch of 4
    for a, t in zip(alone, together, strict=True):
        # A padding row (zeros) or a neighbour's row would give another distribution entirely;
        # the same row in a larger batch differs only by float32 summation order (~1e-6).
        assert t["label"] == a["label"]
        for m in ("audio", "video"):
            np.testing.assert_allclose(
                list(t["modalities"][m]["probabilities"].values()), list(a["modalities"][m]["probabilities"].values()), atol=1e-4
            )
        np.testing.assert_allclose(list(t["probabilities"].values()), list(a["probabilities"].values()), atol=1e-4)
