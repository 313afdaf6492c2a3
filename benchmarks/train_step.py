"""Training step time of MLA against joint training, as a ratio from one run.

    python -m benchmarks.train_step [--encoder small] [--batch-size 64] [--steps 30]

Same model size, same batch (random inputs of the demo's shapes), same process; the two
methods are timed in alternating rounds so drift on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.report import markdown_table, write
from common.modalities import kind
from training.config import ModelConfig, TrainConfig
from training.distributed import World
from training.methods import TRAINERS
from training.models import build_model


def make_batch(cfg: ModelConfig, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "audio": 0.1 * torch.randn(n, cfg.settings("audio")["clip_samples"], generator=g),
        "audio_present": torch.ones(n, dtype=torch.bool),
        "video": torch.randint(0, 256, (n, *kind("video").input(cfg.settings("video"))[1]), generator=g, dtype=torch.uint8),
        "video_present": torch.ones(n, dtype=torch.bool),
        "label": torch.randint(0, cfg.n_classes, (n,), generator=g),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cfg = ModelConfig.for_encoder(args.encoder, [str(i) for i in range(10)], modalities=["audio", "video"])
    batch = make_batch(cfg, args.batch_size)
    trainers = {}
    for method in ("joint", "mla"):
        torch.manual_seed(0)
        trainers[method] = TRAINERS[method](build_model(cfg), TrainConfig(method=method), World(), steps_total=10_000)
        for _ in range(3):  # warm-up
            trainers[method].step(batch)
    times: dict[str, list[float]] = {"joint": [], "mla": []}
    for _ in range(args.rounds):
        for method, trainer in trainers.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                trainer.step(batch)
                times[method].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    ratio = med["mla"] / med["joint"]
    rows = [[m, med[m] * 1000, med[m] / med["joint"]] for m in ("joint", "mla")]
    md = (
        f"# Training step time: MLA vs joint ({args.encoder} encoder, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads)\n\nMedian of {args.rounds} x {args.steps} steps each, alternating rounds.\n\n"
        + markdown_table(["method", "ms / step", "ratio to joint"], rows)
        + "\n"
    )
    write(
        "train_step", {"encoder": args.encoder, "batch_size": args.batch_size, "median_seconds": med, "mla_over_joint": ratio}, md
    )
    print(md)


if __name__ == "__main__":
    main()
