"""The naive baseline for the service benchmark: the same model in torch eager behind the
same FastAPI shape, decoding in the request, one request at a time, no batching.

    python -m benchmarks.naive_server RUN_DIR PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, UploadFile

from common.fusion import entropy, fuse
from common.media import load_audio, load_video
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.models.classifier import SingleModality


def build(run_dir: Path) -> FastAPI:
    model = model_from_checkpoint(load_checkpoint(run_dir))
    cfg = model.cfg
    paths = {m: SingleModality(model, m).eval() for m in cfg.modalities}  # the torch twin of each exported graph
    lock = asyncio.Lock()
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(audio: UploadFile | None = None, video: UploadFile | None = None) -> dict[str, Any]:
        async with lock:  # one request at a time
            logits: dict[str, np.ndarray] = {}
            with tempfile.TemporaryDirectory() as tmp:
                for m, upload in (("audio", audio), ("video", video)):
                    if upload is None:
                        continue
                    path = Path(tmp) / m
                    path.write_bytes(await upload.read())
                    x = load_audio(path, cfg.spec(m)) if m == "audio" else load_video(path, cfg.spec(m))
                    with torch.inference_mode():
                        logits[m] = paths[m](torch.from_numpy(x)[None]).double().numpy()
            fused = fuse(logits)
            return {
                "label": cfg.labels[int(fused.probs[0].argmax())],
                "probabilities": dict(zip(cfg.labels, map(float, fused.probs[0]), strict=True)),
                "modalities": {
                    m: {"entropy": float(entropy(p)[0]), "weight": float(fused.weights[m][0])}
                    for m, p in fused.modality_probs.items()
                },
            }

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("NAIVE_TORCH_THREADS", "1")))
    uvicorn.run(build(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
