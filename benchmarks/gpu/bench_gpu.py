"""ORT CUDA (fp32 and fp16, IO binding) against torch eager (fp32 and bf16) on the lent GPU.

Run on the device (see ../shared/device/README.md for getting onnxruntime-gpu there):

    python -m benchmarks.gpu.bench_gpu --out "$OUT" [--encoders resnet18 small] [--batches 1 64]

and here, to check the script itself, on the CPU: `--device cpu --quick`. It writes
gpu_bench.json and gpu_bench.md into --out (ORT's profiles under --out/profiles): clips per second per modality, batch and
runtime, each as a ratio to torch eager fp32 from the same run, plus where ONNX Runtime
placed every node (from its profiler) and GPU parity figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch  # first: it loads the CUDA libraries that onnxruntime-gpu then finds

from benchmarks.report import machine, markdown_table
from benchmarks.timing import throughput
from model_export.onnx_graph import export_graph, spec_for
from training.config import ModelConfig
from training.models import build_model
from training.models.classifier import SingleModality


def session(path: Path, device: str, profile_prefix: Path | None = None) -> ort.InferenceSession:
    """A session on `device`; with `profile_prefix`, ORT writes its profile as PREFIX_<time>.json."""
    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)  # never the working directory
    if device == "cuda":
        cuda = {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1", "use_tf32": "1"}
        providers: list[Any] = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


def placement(path: Path, device: str, feed: dict[str, np.ndarray], profiles: Path) -> dict[str, Any]:
    """Which provider ran each node, read from ORT's profiler output (kept under `profiles`)."""
    profiles.mkdir(parents=True, exist_ok=True)
    s = session(path, device, profile_prefix=profiles / path.stem)
    s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    nodes: dict[str, tuple[str, str]] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            nodes[e["name"].removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", ""))
    by_provider: dict[str, int] = {}
    for prov, _ in nodes.values():
        by_provider[prov] = by_provider.get(prov, 0) + 1
    host_ops = sorted({op for prov, op in nodes.values() if prov != "CUDAExecutionProvider"})
    return {"nodes": len(nodes), "by_provider": by_provider, "ops_not_on_cuda": host_ops}


def io_bound(s: ort.InferenceSession, x: np.ndarray, device: str) -> Any:
    """A zero-argument call that runs `s` with input and output already on `device`."""
    binding = s.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    binding.bind_ortvalue_input(s.get_inputs()[0].name, value)
    binding.bind_output(s.get_outputs()[0].name, device)
    return lambda: s.run_with_iobinding(binding)


def _ort_call(s: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Any:
    return lambda: s.run(None, feed)


def bench_encoder(encoder: str, batches: list[int], device: str, quick: bool, profiles: Path) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    cfg = ModelConfig.for_encoder(encoder, ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], modalities=["audio", "video"])
    model = build_model(cfg).eval()
    timing: dict[str, Any] = (
        {"min_seconds": 0.3, "min_iters": 3, "warmup": 2} if quick else {"min_seconds": 2.0, "min_iters": 20, "warmup": 10}
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in cfg.modalities:
            graphs = {}
            for precision in ("fp32", "fp16"):
                spec = spec_for(cfg, m, precision=precision)
                graphs[precision] = Path(tmp) / f"{m}-{precision}.onnx"
                export_graph(model, spec, graphs[precision])
            dev = torch.device(device)
            fp32 = SingleModality(model, m).eval().to(dev)
            bf16 = SingleModality(build_model(cfg).eval(), m).eval().to(dev).to(memory_format=torch.channels_last)
            bf16.load_state_dict(fp32.state_dict())
            s32, s16 = session(graphs["fp32"], device), session(graphs["fp16"], device)
            for batch in batches:
                x = spec.example(batch)
                xd = x.to(dev)
                feed = {spec.input_name: x.numpy()}

                def torch_fp32(xd: torch.Tensor = xd, fp32: torch.nn.Module = fp32) -> None:
                    with torch.inference_mode():
                        fp32(xd)
                    if device == "cuda":
                        torch.cuda.synchronize()

                def torch_bf16(xd: torch.Tensor = xd, bf16: torch.nn.Module = bf16) -> None:
                    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16):
                        bf16(xd)
                    if device == "cuda":
                        torch.cuda.synchronize()

                res = {
                    "torch_fp32": throughput(torch_fp32, batch, **timing),
                    "torch_bf16_channels_last": throughput(torch_bf16, batch, **timing),
                    "ort_fp32_numpy": throughput(_ort_call(s32, feed), batch, **timing),
                    "ort_fp32_iobinding": throughput(io_bound(s32, feed[spec.input_name], device), batch, **timing),
                    "ort_fp16_iobinding": throughput(io_bound(s16, feed[spec.input_name], device), batch, **timing),
                }
                with torch.inference_mode():
                    ref = fp32(xd).float().cpu().numpy()
                got32, got16 = s32.run(None, feed)[0], s16.run(None, feed)[0]
                base = res["torch_fp32"]["clips_per_s"]
                rows.append(
                    {
                        "encoder": encoder,
                        "modality": m,
                        "batch": batch,
                        "clips_per_s": {k: v["clips_per_s"] for k, v in res.items()},
                        "ratio_to_torch_fp32": {k: v["clips_per_s"] / base for k, v in res.items()},
                        "parity": {
                            "fp32_max_abs_logit_diff": float(np.abs(ref - got32).max()),
                            "fp16_max_abs_logit_diff": float(np.abs(ref - got16).max()),
                            "fp16_top1_agreement": float((ref.argmax(1) == got16.argmax(1)).mean()),
                        },
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            rows[-1]["placement"] = {
                p: placement(graphs[p], device, {spec.input_name: spec.example(2).numpy()}, profiles / encoder) for p in graphs
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--encoders", nargs="+", default=["resnet18", "small"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--quick", action="store_true", help="few iterations: to check the script, not to measure")
    args = parser.parse_args()
    if args.device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit(f"onnxruntime {ort.__version__} has no CUDA provider here: {ort.get_available_providers()}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [r for enc in args.encoders for r in bench_encoder(enc, args.batches, args.device, args.quick, args.out / "profiles")]
    info = {**machine(), "onnxruntime": ort.__version__, "device": args.device}
    (args.out / "gpu_bench.json").write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    keys = ["torch_fp32", "torch_bf16_channels_last", "ort_fp32_numpy", "ort_fp32_iobinding", "ort_fp16_iobinding"]
    table = markdown_table(
        ["encoder", "modality", "batch", *keys, "best ORT / torch fp32"],
        [
            [
                r["encoder"],
                r["modality"],
                r["batch"],
                *(round(r["clips_per_s"][k]) for k in keys),
                max(r["ratio_to_torch_fp32"][k] for k in keys[2:]),
            ]
            for r in rows
        ],
    )
    placed = "\n".join(
        f"- {r['encoder']} {r['modality']} {p}: {v['by_provider']}, not on CUDA: {v['ops_not_on_cuda']}"
        for r in rows
        if "placement" in r
        for p, v in r["placement"].items()
    )
    (args.out / "gpu_bench.md").write_text(
        f"# ORT CUDA vs torch eager on {info.get('cuda') or args.device} (clips/s)\n\n{table}\n\nNode placement:\n{placed}\n"
    )
    print((args.out / "gpu_bench.md").read_text())


if __name__ == "__main__":
    main()
