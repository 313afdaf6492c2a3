"""Which epoch a run keeps: `keep="last"` holds the last epoch; a finished run's last epoch as a checkpoint equals it;
and the out-of-fold comparison that decides between them scores and decides as its decision record says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.avdigits.last_epoch import decide, stratified_interval
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.train import checkpoint_of_last, train

EPOCHS = 4


def _cfg(keep: str) -> TrainConfig:
    return TrainConfig(method="mla", epochs=EPOCHS, batch_size=32, workers=0, owm_alpha=10.0, max_batches=3, keep=keep)


def test_keep_last_holds_the_last_epoch_and_equals_the_checkpoint_made_from_last_pt(tiny_demo: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in both runs
    try:
        train(f"csv:{tiny_demo}", tmp_path / "best", _cfg("best"))
        train(f"csv:{tiny_demo}", tmp_path / "last", _cfg("last"))
    finally:
        torch.set_num_threads(threads)
    kept = load_checkpoint(tmp_path / "last")
    assert kept["best_validation"]["all"]["epoch"] == EPOCHS
    assert kept["train_config"]["keep"] == "last"
    last = torch.load(tmp_path / "last" / "last.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in last["model"].items())

    made = checkpoint_of_last(tmp_path / "best")
    assert made["train_config"] == kept["train_config"]
    assert made["best_validation"] == kept["best_validation"]
    assert made["val_accuracy"] == kept["val_accuracy"]
    assert made["world_size"] == kept["world_size"] == 1
    assert made["state_dict"].keys() == kept["state_dict"].keys()
    assert all(torch.equal(made["state_dict"][k], v) for k, v in kept["state_dict"].items())
    assert torch.equal(made["owm_P"], kept["owm_P"])  # MLA's projection goes with the weights it was kept with


@pytest.mark.parametrize(("keep", "epoch"), [("best", 1), ("last", 3)])
def test_the_trainer_keeps_the_best_or_the_last_epoch(keep: str, epoch: int) -> None:
    from training.config import ModelConfig
    from training.distributed import World
    from training.methods import TRAINERS
    from training.models import build_model

    model = build_model(ModelConfig.for_encoder("small", ["0", "1"], shared_head=True, modalities=["audio", "video"]))
    trainer = TRAINERS["mla"](model, _cfg(keep), World(), 1)
    for e, score in enumerate((0.9, 0.8, 0.7), start=1):  # every epoch worse than the one before
        with torch.no_grad():
            next(model.parameters()).fill_(float(e))  # each epoch's weights tell which epoch they are
        trainer.observe_validation(e, {"audio+video": score})
    assert trainer.best_epoch["all"] == epoch
    assert float(next(iter(trainer.best_state.values())).flatten()[0]) == epoch


def test_checkpoint_of_last_refuses_an_unfinished_run(tiny_demo: Path, tmp_path: Path) -> None:
    from training.checkpoint import CheckpointError

    train(f"csv:{tiny_demo}", tmp_path / "run", _cfg("best"))
    path = tmp_path / "run" / "last.pt"
    last = torch.load(path, map_location="cpu", weights_only=False)
    last["epoch"] = EPOCHS - 1
    torch.save(last, path)
    with pytest.raises(CheckpointError, match="stopped after epoch 3 of 4"):
        checkpoint_of_last(tmp_path / "run")


def test_keep_last_writes_a_finished_run_that_serves_the_last_epoch(tiny_run: Path, tmp_path: Path) -> None:
    import json

    from training.checkpoint import model_from_checkpoint
    from training.keep_last import keep_last

    out = tmp_path / "last"
    keep_last(tiny_run, out)
    ckpt = load_checkpoint(out)
    epochs = ckpt["train_config"]["epochs"]
    assert ckpt["best_validation"]["all"]["epoch"] == epochs
    model_from_checkpoint(ckpt)  # loads as any checkpoint does
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "keep_last"
    assert rows[-1]["best_validation"]["all"]["epoch"] == epochs
    assert load_checkpoint(tiny_run)["train_config"]["keep"] == "best"  # the run itself is left as it was
    with pytest.raises(SystemExit, match="must differ"):
        keep_last(tiny_run, tiny_run)


def test_stratified_interval_resamples_within_groups() -> None:
    groups = np.array(["a"] * 30 + ["b"] * 70)
    # a difference constant within each group: every resample within groups has the same mean
    diff = np.where(groups == "a", 1.0, -1.0)
    assert stratified_interval(diff, groups, seed=0, resamples=200) == pytest.approx([-0.4, -0.4, -0.4])
    # noise around a clearly negative mean: the interval holds the mean and excludes 0
    rng = np.random.default_rng(1)
    noisy = -0.5 + rng.normal(0, 0.3, 100)
    mean, low, high = stratified_interval(noisy, groups, seed=0, resamples=500)
    assert low < mean < high < 0


def _cells(audio_nll: float, pair_nll_low: float, video_acc: float) -> dict:
    def cell(nll: list[float], acc: float) -> dict:
        return {"nll_change": nll, "accuracy_change": [acc, acc - 0.01, acc + 0.01]}

    return {
        "audio": cell([audio_nll - 0.01, audio_nll - 0.02, audio_nll], 0.0),
        "video": cell([0.0, -0.01, 0.01], video_acc),
        "audio+video": cell([pair_nll_low + 0.01, pair_nll_low, pair_nll_low + 0.02], 0.0),
    }


@pytest.mark.parametrize(
    ("cells", "adopted", "failing"),
    [
        (_cells(-0.01, -0.01, 0.0), True, None),
        (_cells(0.005, -0.01, 0.0), False, "audio NLL falls"),  # the interval reaches above 0
        (_cells(-0.01, 0.001, 0.0), False, "pair and video NLL"),  # the pair's interval wholly above 0
        (_cells(-0.01, -0.01, -0.006), False, "accuracy"),  # video loses more than half a point
    ],
)
def test_the_rule_adopts_only_when_every_clause_holds(cells: dict, adopted: bool, failing: str | None) -> None:
    decision = decide(cells)
    assert decision["adopted"] is adopted
    failed = [name for name, ok in decision["clauses"].items() if not ok]
    assert failed == ([] if failing is None else [next(n for n in decision["clauses"] if n.startswith(failing))])


def test_the_rule_for_a_video_change_asks_video_to_fall_and_audio_not_to_rise() -> None:
    cells = _cells(audio_nll=-0.01, pair_nll_low=-0.01, video_acc=0.0)  # video's NLL interval straddles 0
    decision = decide(cells, target="video")
    assert not decision["adopted"]
    assert [n for n, ok in decision["clauses"].items() if not ok] == ["video NLL falls (interval wholly below 0)"]
    cells["video"]["nll_change"] = [-0.02, -0.03, -0.01]
    assert decide(cells, target="video")["adopted"]
    cells["audio"]["nll_change"] = [0.02, 0.01, 0.03]  # the voice's interval wholly above 0
    decision = decide(cells, target="video")
    failed = [n for n, ok in decision["clauses"].items() if not ok]
    assert failed == ["pair and audio NLL do not rise (neither interval wholly above 0)"]
