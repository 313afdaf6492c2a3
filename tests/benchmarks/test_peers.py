"""The peer servers of the serving benchmark (benchmarks/peers/): each starts on the default model and answers a few
real requests of the benchmark's mix exactly as the service does (labels equal, probabilities within float32
tolerance). Skipped where .venv/peers (requirements/peers.in) is absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import live
from benchmarks.live import free_port
from benchmarks.peers.servers import PEERS, PEERS_VENV, check_answers, command, mix, peers_python
from benchmarks.serve_load import start, stop
from common.manifest import newest_version

ROOT = Path(__file__).resolve().parents[2]
MODEL = newest_version(ROOT / "models" / "default")

pytestmark = pytest.mark.skipif(
    peers_python() is None,
    reason=f"{PEERS_VENV} is absent: `make .venv/peers/.installed` (make test does) installs requirements/peers.txt",
)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (MODEL / "manifest.json").is_file():
        pytest.skip(f"no {MODEL}: `make default-model`")
    server = live.start(MODEL, tmp_path_factory.mktemp("service"))
    yield server.url
    live.stop(server)


@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS)
def test_peer_answers_as_the_service(peer: str, ours: str, demo_rows: list[dict[str, str]]) -> None:
    rows = [r for r in demo_rows if r["split"] == "test" and r["audio"] and r["video"]][:2]
    sample = mix((Path(r["audio"]), Path(r["video"])) for r in rows)
    port = free_port()
    cmd, env = command(peer, MODEL, port)
    proc = start(cmd, port, env)
    try:
        report = check_answers(ours, {peer: f"http://127.0.0.1:{port}"}, sample)[peer]
    finally:
        stop(proc)
    assert report["checked"] == 6  # two pairs, each wav alone, each mp4 alone
    assert report["problems"] == [], report
    assert report["max_prob_diff"] <= report["tolerance"]
