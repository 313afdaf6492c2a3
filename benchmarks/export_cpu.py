"""ONNX Runtime on the CPU against torch eager for the same exported model, batch 1 and 32.

    python -m benchmarks.export_cpu [--encoder small] [--run RUN_DIR] [--threads 2]

Both run with the same number of threads, in one process, on the same inputs; the figure
that matters is the ratio ORT / torch from this one run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.report import markdown_table, write
from benchmarks.timing import throughput
from model_export.onnx_graph import export_graph, spec_for
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import ModelConfig
from training.models import build_model
from training.models.classifier import SingleModality


def _torch_call(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call


def _ort_call(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="small", help="used when --run is not given (random weights)")
    parser.add_argument("--run", type=Path, help="a trained run to export instead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.run:
        model = model_from_checkpoint(load_checkpoint(args.run))
    else:
        torch.manual_seed(0)
        model = build_model(
            ModelConfig.for_encoder(args.encoder, [str(i) for i in range(10)], modalities=["audio", "video"])
        ).eval()
    cfg = model.cfg
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in cfg.modalities:
            spec = spec_for(cfg, m)
            path = Path(tmp) / f"{m}.onnx"
            export_graph(model, spec, path)
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            module = SingleModality(model, m).eval()
            for batch in args.batches:
                x = spec.example(batch)
                feed = {spec.input_name: x.numpy()}
                t = throughput(_torch_call(module, x), batch)
                o = throughput(_ort_call(session, feed), batch)
                with torch.inference_mode():
                    diff = float(np.abs(module(x).numpy() - session.run(None, feed)[0]).max())
                results.append(
                    {
                        "modality": m,
                        "batch": batch,
                        "torch_eager": t,
                        "ort_cpu": o,
                        "ort_over_torch": o["clips_per_s"] / t["clips_per_s"],
                        "max_abs_logit_diff": diff,
                    }
                )
    rows = [
        [r["modality"], r["batch"], r["torch_eager"]["clips_per_s"], r["ort_cpu"]["clips_per_s"], r["ort_over_torch"]]
        for r in results
    ]
    md = (
        f"# ONNX Runtime CPU vs torch eager ({cfg.encoder} encoder, {args.threads} threads, clips/s)\n\n"
        + markdown_table(["modality", "batch", "torch eager", "ORT CPU", "ORT / torch"], rows)
        + "\n"
    )
    write(f"export_cpu_{cfg.encoder}", {"encoder": cfg.encoder, "threads": args.threads, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
