"""The least a Python server must do to answer bench/oip's requests: a yardstick, not a server.

A bare ASGI app under uvicorn with httptools (the HTTP stack Sluiceway uses), one process:
it reads the body, cuts the binary tensor out of it (or parses the JSON one), calls the model
and writes the answer. Nothing else: no validation beyond what the answer needs, no limits, no
batching, no metrics, no logging, no error answers a client could act on. Whatever it costs
beside the model call, every Python server over HTTP pays at least that, so its rate against
the ceiling is the most that such a server can reach on this machine (``bench/oip/run.py``
reports it beside Sluiceway's rows).

The model is called as the ceiling calls it: one ONNX Runtime session, one intra-op thread,
no spinning, from two threads (two requests at once; more wait for a thread). A 1-element
request (the protocol-overhead model) is run on the event loop itself, which is cheaper than a
hop to a thread for a call of a few microseconds.

    python bench/oip/servers/bare_app.py --model_name mobilenet --model_path M.onnx --port P
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_DTYPES = {"FP32": np.float32}


class BareServer:
    """One model, answered over ``POST /v2/models/{name}/infer``; ``GET /ping`` and the
    readiness route answer ``200`` with no work."""

    def __init__(self, name: str, path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.name = name
        self.output = self.session.get_outputs()[0].name
        self.infer_path = f"/v2/models/{name}/infer"
        self.threads = ThreadPoolExecutor(max_workers=2)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to start or stop
        path = scope["path"]
        if scope["method"] == "POST" and path == self.infer_path:
            await self.infer(scope, receive, send)
        else:
            await _answer(send, 200, b"", [])

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        pieces = []
        while True:
            message = await receive()
            pieces.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        header_length = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = int(value)
        if header_length is None:  # JSON tensors
            request = json.loads(body)
            item = request["inputs"][0]
            tensor = np.asarray(item["data"], _DTYPES[item["datatype"]]).reshape(item["shape"])
        else:  # a binary tensor after the JSON header
            request = json.loads(body[:header_length])
            item = request["inputs"][0]
            tensor = np.frombuffer(body, _DTYPES[item["datatype"]], offset=header_length)
            tensor = tensor.reshape(item["shape"])
        feed = {item["name"]: tensor}
        if tensor.size == 1:
            (result,) = self.session.run(None, feed)
        else:
            loop = asyncio.get_running_loop()
            (result,) = await loop.run_in_executor(self.threads, self.session.run, None, feed)
        output: dict[str, Any] = {"name": self.output, "datatype": "FP32", "shape": result.shape}
        binary = request.get("parameters", {}).get("binary_data_output", False)
        if binary:
            data = result.astype("<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(data)}
            head = json.dumps({"model_name": self.name, "outputs": [output]}).encode()
            extra = [(b"inference-header-content-length", str(len(head)).encode())]
            await _answer(send, 200, head + data, extra)
        else:
            output["data"] = result.ravel().tolist()
            answer = json.dumps({"model_name": self.name, "outputs": [output]}).encode()
            await _answer(send, 200, answer, [(b"content-type", b"application/json")])


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = BareServer(args.model_name, args.model_path)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop",
        access_log=False, log_level="warning", lifespan="off",
    )  # fmt: skip


if __name__ == "__main__":
    main()
