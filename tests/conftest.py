"""Shared fixtures: an isolated cache, a tiny demo dataset, the real shared data if present."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.servers import Server

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_SIZES = {"train": 160, "val": 32, "test": 24}
COMPOSE_TESTS = ROOT / "tests" / "deploy" / "compose"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        action="store_true",
        help="run tests/deploy/compose: build the image and run the compose stack in a Docker engine (make compose-test)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The compose stack takes minutes and a Docker engine: `make compose-test` runs it, on its own."""
    if config.getoption("--compose"):
        return
    compose = [item for item in items if COMPOSE_TESTS in item.path.parents]
    if compose:
        config.hook.pytest_deselected(items=compose)
        items[:] = [item for item in items if COMPOSE_TESTS not in item.path.parents]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test writes decoded arrays and generated data under a temporary folder."""
    root = tmp_path_factory.mktemp("mla-cache")
    old = os.environ.get("MLA_CACHE_DIR")
    os.environ["MLA_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MLA_CACHE_DIR", None)
    else:
        os.environ["MLA_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset small enough to train on in seconds; returns its manifest."""
    from training.data.demo import generate

    return generate(tmp_path_factory.mktemp("tiny-demo"), seed=3, sizes=TINY_SIZES)


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data sets live beside the project in ../shared/data")
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLA run on the tiny demo, trained until it is confident on its training clips (seconds)."""
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(f"csv:{tiny_demo}", out, TrainConfig(method="mla", epochs=30, batch_size=32, workers=0, owm_alpha=10.0))
    return out


@pytest.fixture(scope="session")
def tiny_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported (fp32): MODEL_DIR/tiny/1."""
    from model_export.repository import export_run

    # The paper's per-sample entropy rule, whose weights the service tests follow sample by sample.
    return export_run(tiny_run, tmp_path_factory.mktemp("models"), name="tiny", version="1", rule="entropy")


@pytest.fixture(scope="session")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mla serve` on the tiny model, with a 4 MiB upload limit; every file goes through the upload
    folder (no upload kept in memory), so the tests that check it is left empty mean something."""
    from tests.servers import start_server, stop_server

    env = {"MLA_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024), "MLA_MEMORY_UPLOAD_BYTES": "0"}
    srv = start_server(tiny_repo, tmp_path_factory.mktemp("server"), **env)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def demo_rows(tiny_demo: Path) -> list[dict[str, str]]:
    with tiny_demo.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("audio", "video"):
            r[col] = str(tiny_demo.parent / r[col])
    return rows


@pytest.fixture(scope="session")
def clean_train_row(demo_rows: list[dict[str, str]]) -> dict[str, str]:
    """A training clip with neither modality corrupted: the tiny model is confident on it."""
    return next(r for r in demo_rows if r["split"] == "train" and not r["corrupted"])
