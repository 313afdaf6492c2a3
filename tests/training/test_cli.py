"""`mla train` and `mla evaluate`, run in-process, on a tiny demo."""

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from training.calibrate import RULE_VARIANTS
from training.config import OWM_ALPHA_GRID
from training.data.files import write_manifest

runner = CliRunner()


def _train(data: str, out: Path, method: str, *extra: str) -> None:
    result = runner.invoke(
        app, ["train", "--data", data, "--method", method, "--out", str(out), "--epochs", "2", "--workers", "0", *extra]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mla", "joint", "unimodal"])
def test_train_then_evaluate(tiny_demo: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    # MLA with its default --owm-alpha auto: one short run per alpha of the grid
    _train(f"csv:{tiny_demo}", out, method, *(["--max-batches", "2"] if method == "mla" else []))
    assert {"checkpoint.pt", "metrics.jsonl", "val_accuracy.png"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert set(epochs[0]["val_accuracy"]) == {"audio", "video", "audio+video"}
    assert all(v > 0 for r in epochs for v in r["loss"].values())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["method"] == method
    assert ckpt["model_config"]["labels"] == [str(i) for i in range(10)]
    assert ckpt["model_config"]["shared_head"] is (method != "unimodal")
    if method == "mla":
        assert ckpt["owm_updates"] > 0
        # auto: every alpha of the grid tried, the one with the best validation accuracy kept
        search = ckpt["owm_alpha_search"]
        assert set(search) == {f"{a:g}" for a in OWM_ALPHA_GRID}
        assert ckpt["train_config"]["owm_alpha"] in OWM_ALPHA_GRID
        assert search[f"{ckpt['train_config']['owm_alpha']:g}"] == max(search.values())
        assert all((out / f"alpha-{a:g}" / "checkpoint.pt").is_file() for a in OWM_ALPHA_GRID)
        # the projection's state is logged every epoch
        for r in epochs:
            assert 0 < r["projection"]["trace_over_dim"] <= 1
            assert 0 < r["projection"]["lambda_min"] <= r["projection"]["trace_over_dim"]
            assert 0 < r["projection"]["grad_kept"] <= 1 + 1e-9
    assert epochs[0]["fusion"] == ("logit_sum" if method == "joint" else "entropy")

    result = runner.invoke(app, ["evaluate", str(out), "--data", f"csv:{tiny_demo}", "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 24
    assert report["fusion"] == ("logit_sum" if method == "joint" else "entropy")  # each method by its own rule
    for key in ("accuracy", "macro_f1", "nll", "brier", "ece", "adaptive_ece"):
        assert set(report[key]) == {"audio", "video", "audio+video"}
        assert all(v >= 0.0 for v in report[key].values())
    assert all(v <= 1.0 for key in ("accuracy", "macro_f1", "ece", "adaptive_ece") for v in report[key].values())
    assert set(report["by_fusion"]) == set(RULE_VARIANTS)  # every method under every rule
    for rule, res in report["by_fusion"].items():
        assert set(res["accuracy"]) == {"audio", "video", "audio+video"}, rule
    assert report["accuracy"] == report["by_fusion"][report["fusion"]]["accuracy"]
    assert set(report["abstention"]["by_subset"]) == {"audio", "video", "audio+video"}
    assert all(0.0 <= t["coverage"] <= 1.0 for t in report["abstention"]["by_subset"].values())
    for plot in ("confusion", "reliability", "risk_coverage"):
        assert Path(report["plots"][plot]).is_file()


def _with_broken_test_split(tiny_demo: Path, tmp_path: Path) -> Path:
    """A copy of the manifest whose test rows point at an undecodable file."""
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    with tiny_demo.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("audio", "video"):
            r[col] = str(tiny_demo.parent / r[col])
        if r["split"] == "test":
            r["video"] = str(tmp_path / "broken.mp4")
    return write_manifest(tmp_path / "manifest.csv", rows)


@pytest.mark.slow
def test_training_never_reads_the_test_split(tiny_demo: Path, tmp_path: Path) -> None:
    """Checkpoints are chosen on validation: training succeeds although every test file is
    broken, and only evaluating on test runs into them, with a clear message."""
    manifest = _with_broken_test_split(tiny_demo, tmp_path)
    out = tmp_path / "run"
    _train(f"csv:{manifest}", out, "mla", "--max-batches", "1", "--owm-alpha", "10")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["best_validation"]["all"]["epoch"] in (1, 2)
    result = runner.invoke(app, ["evaluate", str(out), "--data", f"csv:{manifest}", "--split", "test", "--json"])
    assert result.exit_code == 2
    assert "manifest.csv row" in result.stderr
    assert "broken.mp4" in result.stderr
    assert "Traceback" not in result.output


def test_bad_arguments_are_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", "nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "bad data spec 'nope'" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--method", "magic", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "unknown method 'magic'" in result.stderr
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing"), "--data", "nope"])
    assert result.exit_code == 2
    assert "no checkpoint" in result.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "junk")])
    assert result.exit_code == 2
    assert "not a readable checkpoint" in result.stderr
