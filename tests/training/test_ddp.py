"""Distributed training: two processes under torchrun on the gloo backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mla", "joint"])
def test_torchrun_two_processes(tiny_demo: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cli.main",
        "train",
        "--data",
        f"csv:{tiny_demo}",
        "--method",
        method,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--max-batches",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = next(r for r in reversed(rows) if r["event"] == "done")
    assert done["world_size"] == 2
    if method == "mla":
        # --owm-alpha auto under DDP: every process runs the same search, and the kept run is one of it
        assert rows[-1]["event"] == "alpha_search"
        assert set(ckpt["owm_alpha_search"]) == {"1", "10", "100", "1000"}
        # both processes fold the same all-reduced feature into P every step
        assert ckpt["owm_updates"] == 2 * 2 * 3
    else:
        assert rows[-1] == done
