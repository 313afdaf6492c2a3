"""A run killed after its second epoch and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

EPOCHS = 5


def _cmd(data: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli.main",
        "train",
        "--data",
        data,
        "--method",
        "mla",
        "--owm-alpha",
        "10",
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "32",
        "--workers",
        "0",
        "--max-batches",
        "3",
        *extra,
    ]


def _epochs_done(run: Path) -> int:
    path = run / "last.pt"
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # replaced while we read it: read it again on the next poll
        return 0


def _epoch_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows if r["event"] == "epoch"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_demo: Path, tmp_path: Path) -> None:
    data = f"csv:{tiny_demo}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in both runs

    straight = tmp_path / "straight"
    subprocess.run(_cmd(data, straight), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _epochs_done(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
    proc.wait(timeout=30)
    stopped_after = _epochs_done(killed)
    assert 2 <= stopped_after < EPOCHS
    assert not (killed / "checkpoint.pt").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--resume", str(killed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert _epoch_rows(straight) == _epoch_rows(killed)  # every epoch's losses, validation and projection figures
    assert a["best_validation"] == b["best_validation"]
    assert a["owm_updates"] == b["owm_updates"]
    assert torch.equal(a["owm_P"], b["owm_P"])
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


@pytest.mark.parametrize("alpha", [10.0, None], ids=["one-run", "alpha-search"])
def test_a_finished_run_is_kept_as_it_is(tiny_demo: Path, tmp_path: Path, alpha: float | None) -> None:
    """Resuming a run that already finished trains nothing and rewrites nothing: its checkpoint keeps its bytes,
    so whatever is keyed by the checkpoint's hash (the corruption benchmark's cached logits) stays valid."""
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(method="mla", epochs=2, batch_size=32, workers=0, max_batches=2, owm_alpha=alpha)
    out = tmp_path / "run"
    first = train(f"csv:{tiny_demo}", out, cfg)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    assert out / "checkpoint.pt" in files
    again = train(f"csv:{tiny_demo}", out, cfg, resume=True)
    assert {p: p.read_bytes() for p in files} == files
    assert again["best_validation"] == first["best_validation"]
    assert again["train_seconds"] == first["train_seconds"]
    if alpha is None:
        assert again["owm_alpha"] == first["owm_alpha"]
