"""The model served by LitServe, configured as its documentation recommends for throughput on CPU.

    .venv/peers/bin/python -m benchmarks.peers.litserve_server MODEL_DIR PORT [--workers 2] [--batch 8] [--timeout-ms 5]

LitServe (lightning.ai/docs/litserve): a LitAPI's `decode_request` runs per request in an inference worker process,
`predict` on a batch of up to `max_batch_size` requests gathered within `batch_timeout`, `encode_response` per request;
`workers_per_device` inference workers per device, behind uvicorn API server process(es). Here:
- decode_request: the uploads' bytes through common.media (benchmarks/peers/pipeline.py), in the worker;
- predict: one ONNX Runtime call per modality on the batch (a request may carry audio, video or both);
- encode_response: the service's answer (common.answer.decide);
- on this 2-core machine: accelerator "cpu", `workers_per_device` 2 (one worker process per core; each ORT session
  runs one thread, so the workers do not contend for the cores), batching on (`max_batch_size` 8, `batch_timeout`
  5 ms), `fast_queue` on (ZeroMQ between the API servers and the workers, LitServe's option for throughput) and 2 API
  servers (`num_api_servers`, ahead in both passes of benchmarks/peers/configs.py). What was tried:
  benchmarks/peers/README.md.
"""

import argparse
import logging
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException, Request

from benchmarks.peers.pipeline import Pipeline
from common.media import MediaError

log = logging.getLogger(__name__)


class ClassifierAPI(ls.LitAPI):
    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.pipeline = Pipeline(self.model_dir, threads=1)

    def decode_request(self, request: Request) -> dict[str, np.ndarray]:
        """The multipart form's `audio` and/or `video` uploads, decoded. LitServe reads the request's form for us and
        hands over the form itself, so the annotation must be the Request class (no postponed annotations here)."""
        form: Any = request
        rows = {}
        for m in self.pipeline.modalities:
            upload = form.get(m)
            if upload is None or isinstance(upload, str):
                continue
            try:
                rows[m] = self.pipeline.decode(m, upload.filename or m, upload.file.read())
            except MediaError as exc:
                raise HTTPException(415, f"{m}: {exc}") from exc
        if not rows:
            raise HTTPException(422, "send a file as `audio` and/or `video`")
        return rows

    def batch(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return inputs  # requests carry different modalities: predict stacks each modality's rows itself

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def predict(self, rows: Any) -> Any:
        """A batch (a list of requests' inputs) when batching is on; one request's inputs when max_batch_size is 1."""
        if isinstance(rows, dict):
            return self.pipeline.infer_rows([rows])[0]
        return self.pipeline.infer_rows(rows)

    def encode_response(self, outputs: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
        return self.pipeline.answer(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--workers", type=int, default=2, help="workers_per_device (one CPU device)")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size")
    parser.add_argument("--timeout-ms", type=float, default=5.0, help="batch_timeout")
    parser.add_argument("--api-servers", type=int, default=2, help="num_api_servers")
    parser.add_argument("--no-fast-queue", action="store_true")
    args = parser.parse_args()
    api = ClassifierAPI(args.model, max_batch_size=args.batch, batch_timeout=args.timeout_ms / 1000, api_path="/v1/predict")
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        timeout=60,
        healthcheck_path="/readyz",
        fast_queue=not args.no_fast_queue,
    )
    server.run(
        host="127.0.0.1", port=args.port, num_api_servers=args.api_servers, log_level="warning", generate_client_file=False
    )


if __name__ == "__main__":
    main()
