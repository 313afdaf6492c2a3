"""Run by the Open Inference Protocol tests in the clients' own venv (requirements/clients.txt: tritonclient[http] and
kserve from PyPI, whose pins would otherwise constrain the project's): one client sends the files it is given and prints
what came back, as JSON on stdout. It imports nothing from the project.

    python oip_clients.py '{"client": "triton", "url": "127.0.0.1:8000", "model": "tiny",
                            "files": {"audio": "a.wav"}, "binary": true, "version": ""}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np


def triton(job: dict) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=job["url"])
    meta = client.get_model_metadata(job["model"])
    inputs = []
    for modality, path in job["files"].items():
        tensor = httpclient.InferInput(modality, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([Path(path).read_bytes()], dtype=np.object_), binary_data=job["binary"])
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=job["binary"]) for n in ("answer", "probabilities", "label")]
    result = client.infer(job["model"], inputs, outputs=outputs, model_version=job.get("version", ""))
    return {
        "server_live": client.is_server_live(),
        "model_ready": client.is_model_ready(job["model"]),
        "metadata_inputs": [t["name"] for t in meta["inputs"]],
        "answer": json.loads(result.as_numpy("answer")[0]),
        "probabilities": result.as_numpy("probabilities").tolist(),
        "label": result.as_numpy("label")[0].decode(),
        "response": result.get_response(),
    }


def kserve(job: dict) -> dict:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> dict:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        inputs = []
        for modality, path in job["files"].items():
            tensor = InferInput(modality, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([Path(path).read_bytes()], dtype=np.object_), binary_data=job["binary"])
            inputs.append(tensor)
        request = InferRequest(model_name=job["model"], infer_inputs=inputs, request_id="kserve-1")
        response = await client.infer(f"http://{job['url']}", request, model_name=job["model"])
        base = f"http://{job['url']}"
        live, ready = await client.is_server_live(base), await client.is_model_ready(base, job["model"])
        await client.close()
        out = {o.name: o for o in response.outputs}
        label = out["label"].as_numpy()[0]
        answer = out["answer"].as_numpy()[0]
        return {
            "server_live": live,
            "model_ready": ready,
            "answer": json.loads(answer),
            "probabilities": out["probabilities"].as_numpy().tolist(),
            "label": label.decode() if isinstance(label, bytes) else str(label),
            "model_version": response.model_version,
            "id": response.id,
        }

    return asyncio.run(run())


def schema(job: dict) -> dict:
    """KServe's own data models of the protocol (kserve.protocol.rest.v2_datamodels) validate a request and answer."""
    from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse, ModelMetadataResponse

    InferenceRequest.model_validate(job["request"])
    InferenceResponse.model_validate(job["response"])
    ModelMetadataResponse.model_validate(job["metadata"])
    return {"valid": True}


if __name__ == "__main__":
    # one job, or a list of them (one interpreter start for many requests)
    jobs = json.loads(sys.argv[1])
    run = {"triton": triton, "kserve": kserve, "schema": schema}
    results = [run[j["client"]](j) for j in (jobs if isinstance(jobs, list) else [jobs])]
    print(json.dumps(results if isinstance(jobs, list) else results[0], default=str))
