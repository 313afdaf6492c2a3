"""A finished run's last epoch as a run of its own: what `mla train --keep last` would have written.

    python -m training.keep_last RUN_DIR OUT_DIR

Writes OUT_DIR/checkpoint.pt (training.train.checkpoint_of_last: the last epoch's weights, MLA's projection with
them, the run's configs with keep "last") beside copies of RUN_DIR's last.pt and metrics.jsonl (with a last row
saying which epoch is now kept), so that `mla export`,
`python -m training.crossfit` and `mla train --resume` read OUT_DIR as a finished run. Training does not depend on
which epoch is kept, so a run trained with --keep last needs no retraining to serve its last epoch.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from training.checkpoint import CHECKPOINT_NAME, LAST_NAME, save_checkpoint
from training.train import checkpoint_of_last


def keep_last(run: Path, out: Path) -> Path:
    if run.resolve() == out.resolve():
        raise SystemExit("OUT_DIR must differ from RUN_DIR: the run's own checkpoint.pt is kept as it is")
    ckpt = checkpoint_of_last(run)
    out.mkdir(parents=True, exist_ok=True)
    for name in (LAST_NAME, "metrics.jsonl"):
        shutil.copy2(run / name, out / name)
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    with (out / "metrics.jsonl").open("a") as f:  # the copied history's "done" row names the best epoch; say what changed
        f.write(json.dumps({"event": "keep_last", "from": str(run), "best_validation": ckpt["best_validation"]}) + "\n")
    return out / CHECKPOINT_NAME


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("out", type=Path, help="where to write the run that keeps its last epoch")
    args = parser.parse_args(argv)
    print(keep_last(args.run, args.out))


if __name__ == "__main__":
    main()
