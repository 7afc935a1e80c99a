"""The two reference servers the kiosk benchmark measures Sluiceway against.

- ``ceiling``: parses the body and waits the 0.2 s cost of one query, with unlimited
  parallelism and no model at all. No server can beat it under the same load generator.
- ``naive``: the same work as Sluiceway done the obvious way: fit on every request (2.0 s),
  then one inference call (0.2 s), no batching, no cache.

Both are bare ASGI apps on uvicorn (httptools, uvloop), so neither pays framework overhead.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import numpy as np
import orjson
import uvicorn
from sklearn.neighbors import KNeighborsClassifier

FIT_COST_S = 2.0
QUERY_COST_S = 0.2
PER_QUERY_COST_S = 0.05

Scope = dict[str, Any]


async def _read(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(send: Any, status: int, payload: bytes, kind: bytes = b"application/json") -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def ceiling(scope: Scope, receive: Any, send: Any) -> None:
    """Parse the body, wait one query's cost, answer a fixed label."""
    if scope["type"] != "http":
        return
    body = orjson.loads(await _read(receive))
    assert "query_input" in body
    await asyncio.sleep(QUERY_COST_S)
    await _reply(send, 200, b'{"classification_result":[0]}')


def _fit_and_predict(body: dict[str, Any]) -> list[int]:
    rows = np.array(body["training_data"]["training_data"])
    query = np.array(body["query_input"]["query_input"]).reshape(-1, 2)
    model = KNeighborsClassifier(n_neighbors=3).fit(rows[:, :-1], rows[:, -1])
    return [int(label) for label in model.predict(query)]


async def naive(scope: Scope, receive: Any, send: Any) -> None:
    """Fit on every request, then infer: 2.0 s + 0.2 s, nothing shared between requests."""
    if scope["type"] != "http":
        return
    body = orjson.loads(await _read(receive))
    await asyncio.sleep(FIT_COST_S)
    labels = _fit_and_predict(body)
    await asyncio.sleep(QUERY_COST_S + PER_QUERY_COST_S * (len(labels) - 1))
    await _reply(send, 200, orjson.dumps({"classification_result": labels}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=["ceiling", "naive"])
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = ceiling if args.server == "ceiling" else naive
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
