"""An ONNX model on LitServe (``litserve`` on PyPI), answering bench/oip's binary requests.

Run in its own virtualenv (``litserve==0.2.19``, ``onnxruntime==1.32.0``, ``numpy<3``);
Sluiceway is not imported. A ``LitAPI`` whose ``decode_request`` takes the raw body of an Open
Inference Protocol request (a JSON header, then the raw tensor; the header's length in the
``Inference-Header-Content-Length`` request header; JSON tensors without it) and whose
``encode_response`` answers in kind: a JSON header naming the output ``logits``, then its bytes,
with the same response header (JSON when the request did not ask for binary outputs).

Set up as LitServe's documentation says for throughput on a CPU (the ``LitServer`` and
``LitAPI`` reference pages, the batching and autoscaling feature pages):

- ``workers_per_device`` inference worker processes on the one ``cpu`` device, one per core
  (``--workers 2``), each with its own ONNX Runtime session on one intra-op thread, no
  spinning, as bench/oip/run.py's ceiling calls the model;
- ``num_api_servers`` left to LitServe (as many HTTP processes as inference workers);
- dynamic batching (``--max_batch_size`` / ``--batch_timeout`` on the ``LitAPI``): requests
  are cut into tensors one by one, concatenated on axis 0, run as one call, and split back;
- ``fast_queue`` (``--fast_queue``): answers travel from the inference workers to the HTTP
  processes over ZeroMQ instead of a multiprocessing manager's queues (requests still go
  through the manager's queue in this version).

LitServe turns a ``decode_request`` annotated with ``starlette.Request`` into ``await
request.json()``, and sends whatever the route handler got to the workers by pickling it, so a
raw body reaches ``decode_request`` through a FastAPI dependency in the annotation: the route
reads the body and the header length, and the worker gets that pair. LitServe's own routes:
the model at ``/v2/models/{name}/infer`` (the LitAPI's ``api_path``), and its health check at
``/v2/models/{name}/ready`` (``healthcheck_path``: 200 once every inference worker is set up),
where bench/oip's ``wait_ready`` polls. LitServe also wraps every route in its GZip middleware
(it cannot be turned off unless streaming); the benchmark's client asks for no compression.
SIGTERM stops every process LitServe started (see ``main``).

    python bench/oip/servers/litserve_app.py --model_name mobilenet --model_path M.onnx \\
        --port P [--workers 2] [--max_batch_size 8 --batch_timeout 0.005] [--fast_queue]
"""

# No ``from __future__ import annotations`` here: LitServe hands decode_request's annotation
# as it is to FastAPI, which cannot resolve it from a string in LitServe's module.

import argparse
import json
import os
import signal
from types import FrameType
from typing import Annotated, Any

import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi import Depends, Request, Response

_DTYPES = {"FP32": np.float32}

OipBody = tuple[int | None, bytes]
"""What the route hands the workers: the JSON header's length (None: JSON tensors), the body."""


async def oip_body(request: Request) -> OipBody:
    """The request's body as it came, with the length of its JSON header."""
    length = request.headers.get("inference-header-content-length")
    return (int(length) if length is not None else None, await request.body())


class OnnxImageNet(ls.LitAPI):  # type: ignore[misc]
    """The ONNX file in one ONNX Runtime session per inference worker (set up in the worker)."""

    def __init__(self, name: str, path: str, threads: int, **options: Any) -> None:
        super().__init__(**options)
        self.name = name
        self.path = path
        self.threads = threads

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def decode_request(
        self, request: Annotated[OipBody, Depends(oip_body)], context: dict[str, Any]
    ) -> np.ndarray:
        header_length, body = request
        if header_length is None:  # JSON tensors
            header = json.loads(body)
            item = header["inputs"][0]
            tensor = np.asarray(item["data"], _DTYPES[item["datatype"]]).reshape(item["shape"])
        else:  # the tensor's bytes right after the JSON header, not copied
            header = json.loads(body[:header_length])
            item = header["inputs"][0]
            tensor = np.frombuffer(body, _DTYPES[item["datatype"]], offset=header_length)
            tensor = tensor.reshape(item["shape"])
        context["binary"] = header.get("parameters", {}).get("binary_data_output", False)
        context["rows"] = tensor.shape[0]
        return tensor

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        # Each request already holds a batch dimension: join on it (LitServe's default stacks,
        # adding one).
        return np.concatenate(inputs, axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        (result,) = self.session.run(None, {self.input: x})
        output: np.ndarray = result
        return output

    def unbatch(self, output: np.ndarray, context: list[dict[str, Any]]) -> list[np.ndarray]:
        # Back into each request's own rows, as many as it sent.
        edges = np.cumsum([item["rows"] for item in context])[:-1]
        return np.split(output, edges, axis=0)

    def encode_response(self, output: np.ndarray, context: dict[str, Any]) -> Response:
        answer: dict[str, Any] = {"name": self.output, "datatype": "FP32", "shape": output.shape}
        if context["binary"]:
            data = output.astype("<f4").tobytes()
            answer["parameters"] = {"binary_data_size": len(data)}
            head = json.dumps({"model_name": self.name, "outputs": [answer]}).encode()
            return Response(
                head + data,
                media_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(len(head))},
            )
        answer["data"] = output.ravel().tolist()
        body = json.dumps({"model_name": self.name, "outputs": [answer]}).encode()
        return Response(body, media_type="application/json")


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() == _MAIN_PID:
        raise KeyboardInterrupt
    # A forked HTTP process, whose uvicorn raises the signal again once it has closed: end
    # quietly.
    raise SystemExit(0)


def main() -> None:
    # LitServe 0.2.19 stops its processes (HTTP servers, inference workers, the queues'
    # manager) only on KeyboardInterrupt: SIGTERM, what bench/oip's stop() sends, would end this
    # process alone and leave the others running.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="inference workers (processes)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per worker")
    parser.add_argument("--max_batch_size", type=int, default=8, help="1: no batching")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="seconds")
    parser.add_argument("--fast_queue", action="store_true", help="answers over ZeroMQ")
    parser.add_argument("--api_servers", type=int, default=None, help="HTTP processes")
    args = parser.parse_args()
    api = OnnxImageNet(
        args.model_name,
        args.model_path,
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout if args.max_batch_size > 1 else 0.0,
        api_path=f"/v2/models/{args.model_name}/infer",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers,
        healthcheck_path=f"/v2/models/{args.model_name}/ready",
        fast_queue=args.fast_queue,
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,  # it would write client.py into the working folder
        access_log=False,
    )


if __name__ == "__main__":
    main()
