"""A new model version put into a running server without a failed request (service/repository.py)."""

from __future__ import annotations

import asyncio
import base64
import gc
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from common.manifest import manifest_sha256
from service.model import Runtime
from tests.conftest import ROOT
from tests.servers import Server
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
ADMIN = {"X-Admin-Key": "operator"}


@pytest.fixture(scope="module")
def two_versions(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/1 and tiny/2: the same run exported twice under two fusion rules, so their files and answers differ."""
    from model_export.repository import export_run

    root = tmp_path_factory.mktemp("versions")
    export_run(tiny_run, root, name="tiny", version="1", rule="entropy")
    export_run(tiny_run, root, name="tiny", version="2", rule="loglinear")
    return root / "tiny"


@pytest.fixture
def swapping(two_versions: Path, tmp_path: Path) -> Iterator[Server]:
    from tests.servers import start_server, stop_server

    srv = start_server(two_versions, tmp_path, MLA_MODEL_VERSION="1", MLA_ADMIN_KEY="operator")
    yield srv
    stop_server(srv)


def test_a_swap_under_load_fails_no_request_and_every_answer_names_its_version(
    swapping: Server, two_versions: Path, clean_train_row: dict[str, str]
) -> None:
    """16 clients post without pause (both /v1/predict and infer) while the operator loads version 2: no answer but
    200, both versions answer, each answer's manifest hash is its version's, and version 1 is unloaded afterwards."""
    url = swapping.url
    sha = {v: manifest_sha256(two_versions / v) for v in ("1", "2")}
    audio, video = Path(clean_train_row["audio"]).read_bytes(), Path(clean_train_row["video"]).read_bytes()
    encoded = base64.b64encode(audio).decode()
    infer = {
        "inputs": [
            {"name": "audio", "shape": [1], "datatype": "BYTES", "data": [encoded], "parameters": {"content_type": "base64"}}
        ]
    }
    statuses: list[int] = []
    seen: list[tuple[str, str]] = []  # (version, manifest hash) of every answer
    target = Target(32)  # the scenario waits on answers, not on the clock

    def answered(version: str, digest: str) -> None:
        seen.append((version, digest))
        if len(seen) >= target.count:
            target.reached.set()

    async def client(i: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            while not stop.is_set():
                if i % 2:
                    r = await c.post(f"{url}/v1/predict", files={"audio": ("a.wav", audio), "video": ("v.mpg", video)})
                    if r.status_code == 200:
                        answered(r.json()["model"]["version"], r.json()["model"]["manifest_sha256"])
                else:
                    r = await c.post(f"{url}/v2/models/tiny/infer", json=infer)
                    if r.status_code == 200:
                        body = r.json()
                        answered(body["model_version"], body["parameters"]["manifest_sha256"])
                statuses.append(r.status_code)

    async def scenario() -> httpx.Response:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client(i, stop)) for i in range(16)]
        await asyncio.wait_for(target.reached.wait(), 120)
        async with httpx.AsyncClient(timeout=120) as c:
            loaded = await c.post(f"{url}/v2/repository/models/tiny/load", json={"parameters": {"version": "2"}}, headers=ADMIN)
        target.count, target.reached = len(seen) + 32, asyncio.Event()
        await asyncio.wait_for(target.reached.wait(), 120)
        stop.set()
        await asyncio.gather(*tasks)
        return loaded

    loaded = asyncio.run(scenario())
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"name": "tiny", "version": "2", "manifest_sha256": sha["2"]}
    assert statuses
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert {v for v, _ in seen} == {"1", "2"}
    assert all(h == sha[v] for v, h in seen)  # every answer names the files that produced it
    assert seen[-1][0] == "2"  # once swapped, new requests go to version 2
    # version 1 is unloaded once its last request has answered; the metrics say which version answered what
    wait_for("version 1 unloaded", lambda: _state(url, "1") == ("UNAVAILABLE", "unloaded"), timeout=60)
    assert _state(url, "2") == ("READY", "")
    metrics = httpx.get(f"{url}/metrics").text
    assert 'mla_model_version_loaded{version="1"} 0.0' in metrics
    assert 'mla_model_version_loaded{version="2"} 1.0' in metrics
    per_version = {v: _sample(metrics, f'mla_model_version_predictions_total{{version="{v}"}}') for v in ("1", "2")}
    assert per_version["1"] + per_version["2"] == len(seen)
    assert per_version == {v: float(sum(1 for s, _ in seen if s == v)) for v in ("1", "2")}
    # the old version is gone from the lookup: naming it is a 404, not an answer from another version
    gone = httpx.post(f"{url}/v1/predict?version=1", files={"audio": ("a.wav", audio)})
    assert gone.status_code == 404
    assert "not loaded" in gone.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/predict?version=2", files={"audio": ("a.wav", audio)}).json()["model"]["version"] == "2"


@dataclass
class Target:
    count: int
    reached: asyncio.Event = field(default_factory=asyncio.Event)


def _state(url: str, version: str) -> tuple[str, str]:
    index = httpx.post(f"{url}/v2/repository/index", headers=ADMIN).json()
    entry = next(e for e in index if e["version"] == version)
    return entry["state"], entry["reason"]


def _unloaded(url: str, version: str) -> bool:
    return _state(url, version)[0] == "UNAVAILABLE"


def _sample(metrics: str, series: str) -> float:
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(series))


def test_a_version_that_cannot_load_leaves_the_old_one_serving(swapping: Server, two_versions: Path, tmp_path: Path) -> None:
    url = swapping.url
    wrong = httpx.post(f"{url}/v2/repository/models/tiny/load", json={"parameters": {"version": "7"}}, headers=ADMIN)
    assert wrong.status_code == 404
    assert "no version" in wrong.json()["error"]
    assert httpx.post(f"{url}/v2/repository/models/tiny/load", json={"parameters": {"version": "2"}}).status_code == 401
    assert httpx.post(f"{url}/v2/repository/models/tiny/load", content=b"{not json", headers=ADMIN).status_code == 422
    assert httpx.get(f"{url}/v2/models/tiny").json()["versions"] == ["1"]
    assert _state(url, "1") == ("READY", "")


def test_the_swapped_out_versions_sessions_are_released(two_versions: Path, tmp_path: Path) -> None:
    """In process, with server inference: after the swap and the drain, nothing holds version 1's ONNX Runtime sessions
    (weak references die), while a request that held version 1 through the swap was answered by it. (A decode worker
    keeps at most SESSIONS_KEPT sessions: tests/service/test_worker_inference.py.)"""
    from service.metrics import Metrics
    from service.repository import Repository
    from service.settings import Settings

    async def scenario() -> tuple[list[weakref.ref], str, str]:
        settings = Settings(
            model_dir=two_versions, model_version="1", providers=["cpu"], decode_workers=1, tmp_dir=tmp_path, inference="server"
        )
        repository = Repository(settings, Metrics())
        repository.load_first()
        gc.unfreeze()  # whatever an earlier test's server froze
        await repository.start()
        assert gc.get_freeze_count() > 0  # what the server holds for its life is out of full collections
        old = repository.get()
        sessions = [weakref.ref(rt.session) for rt in old.runtimes.values()]
        held = repository.get().acquire()  # a request in flight on version 1
        await repository.load("2")
        assert repository.get().version == "2"
        assert not held.unloaded  # it waits for the request
        outputs = await held.predict({m: _zeros(rt) for m, rt in held.runtimes.items()})
        answered_by = held.postprocess(outputs)["model"]["version"]
        held.release()
        await repository.drained()
        assert held.unloaded
        assert not held.runtimes
        state = repository.index()[0]["state"]
        await repository.close()
        del old, held
        return sessions, answered_by, state

    sessions, answered_by, state = asyncio.run(scenario())
    gc.collect()
    assert answered_by == "1"
    assert state == "UNAVAILABLE"
    assert sessions
    assert all(ref() is None for ref in sessions)


def _zeros(rt: Runtime) -> np.ndarray:
    entry = rt.entry
    return np.zeros(tuple(int(d) for d in entry.input.shape[1:]), np.dtype(entry.input.dtype))


def test_swapping_back_while_the_old_copy_drains_keeps_the_new_copy_serving(two_versions: Path, tmp_path: Path) -> None:
    """1 -> 2 while a request holds 1, then back to 1 before that request ends: when the old copy of 1 is unloaded at
    last, the new copy of 1 stays loaded, ready and counted, and answers."""
    from service.metrics import Metrics
    from service.repository import Repository
    from service.settings import Settings

    async def scenario() -> tuple[str, tuple[str, str], float, str, bool]:
        settings = Settings(model_dir=two_versions, model_version="1", providers=["cpu"], decode_workers=1, tmp_dir=tmp_path)
        metrics = Metrics()
        repository = Repository(settings, metrics)
        repository.load_first()
        await repository.start()
        held = repository.get().acquire()
        await repository.load("2")
        again = await repository.load("1")
        assert again is not held
        held.release()
        await repository.drained()
        model = repository.get(version="1")
        outputs = await model.predict({m: _zeros(rt) for m, rt in model.runtimes.items()})
        answered_by = model.postprocess(outputs)["model"]["version"]
        state = next((e["state"], e["reason"]) for e in repository.index() if e["version"] == "1")
        loaded = metrics.registry.get_sample_value("mla_model_version_loaded", {"version": "1"}) or 0.0
        info = metrics.registry.get_sample_value(
            "mla_model_info", {"name": "tiny", "version": "1", "modality": "audio", "provider": "CPUExecutionProvider"}
        )
        await repository.close()
        return answered_by, state, loaded, repository.get().version, info == 1.0

    answered_by, state, loaded, default, info = asyncio.run(scenario())
    assert answered_by == "1"
    assert default == "1"
    assert state == ("READY", "")
    assert loaded == 1.0
    assert info  # the new copy's series survives the old copy's unload


def test_the_poll_swaps_to_a_new_version_once_its_copy_is_whole(two_versions: Path, tmp_path: Path) -> None:
    """MLA_MODEL_POLL_SECONDS: version 2 copied in half (its manifest first, a graph cut short) fails to load and
    version 1 keeps answering; once the copy is whole, the poll loads it and swaps, without being asked."""
    import shutil

    from service.metrics import Metrics
    from service.repository import Repository
    from service.settings import Settings

    root = tmp_path / "tiny"
    shutil.copytree(two_versions / "1", root / "1")

    async def until(condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(60):
                while not condition():
                    await asyncio.sleep(0.02)  # polling a condition, as the poller it waits on does
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def scenario() -> tuple[str, str, float]:
        settings = Settings(model_dir=root, model_poll_seconds=0.05, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path)
        metrics = Metrics()
        repository = Repository(settings, metrics)
        repository.load_first()
        await repository.start()
        half = root / "2"
        half.mkdir()
        shutil.copy(two_versions / "2" / "manifest.json", half / "manifest.json")
        graph = (two_versions / "2" / "audio.onnx").read_bytes()
        (half / "audio.onnx").write_bytes(graph[: len(graph) // 2])
        await until(lambda: repository.states.get("2", ("", ""))[1].startswith("load failed"), "the half copy refused")
        during = repository.get().version
        shutil.rmtree(half)
        shutil.copytree(two_versions / "2", half)
        await until(lambda: repository.get().version == "2", "the poll's swap to version 2")
        await repository.drained()
        failures = metrics.registry.get_sample_value("mla_model_loads_total", {"outcome": "failed"}) or 0.0
        state = repository.index()[0]["state"]
        await repository.close()
        return during, state, failures

    during, state_of_1, failures = asyncio.run(scenario())
    assert during == "1"  # the half copy never answered
    assert state_of_1 == "UNAVAILABLE"  # version 1 unloaded after the swap
    assert failures >= 1


def test_memory_stays_bounded_over_many_swaps(tmp_path: Path) -> None:
    """Forty swaps between the default model's versions 2 and 3 on a live server, with glibc's arenas capped as the
    image caps them (MALLOC_ARENA_MAX=2): the median RSS after the last ten swaps is within a bound of the median after
    the first ten. A swapped-out version that stayed would hold at least its graphs' and detectors' bytes, so the 30
    swaps between the two windows' middles would lift the second median by 30 times that; the bound is half of it.
    Medians, not maxima: the allocator's RSS swings by tens of MB from one swap to the next (more under load), and a
    window's maximum follows the swing, where a leak moves every swap's floor."""
    import psutil

    from tests.servers import start_server, stop_server

    root = ROOT / "models" / "default"
    kept = min(sum(f.stat().st_size for f in (root / v).rglob("*") if f.suffix in (".onnx", ".npy")) for v in ("2", "3"))
    env = {"MLA_MODEL_VERSION": "2", "MLA_ADMIN_KEY": "operator", "MLA_DECODE_WORKERS": "1", "MALLOC_ARENA_MAX": "2"}
    srv = start_server(root, tmp_path, **env)
    try:
        process = psutil.Process(srv.proc.pid)
        rss = []
        for i in range(40):
            new, old = ("3", "2") if i % 2 == 0 else ("2", "3")
            r = httpx.post(
                f"{srv.url}/v2/repository/models/default/load", json={"parameters": {"version": new}}, headers=ADMIN, timeout=120
            )
            assert r.status_code == 200, r.text
            wait_for(f"version {old} unloaded", partial(_unloaded, srv.url, old), timeout=60, every=0.05)
            rss.append(process.memory_info().rss)
    finally:
        stop_server(srv)
    first, last = float(np.median(rss[:10])), float(np.median(rss[30:]))
    assert last - first < 30 * kept / 2, ([r >> 20 for r in rss], kept >> 20)
