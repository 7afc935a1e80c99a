"""CPU per request of the HTTP protocol alone: uvicorn's httptools protocol vs ``EdgeProtocol``.

    python -m bench.edge.protocol_cost [--requests 20000] [--rounds 5]

A kiosk request as Locust sends it (headers and a 10-row JSON body in one read) is fed to one
keep-alive connection of each protocol over an in-memory transport, and a trivial ASGI app
answers it; the difference per request is what the edge's limits cost, free of the load
generator's and the machine's noise. Rounds alternate between the two protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bench.loadtest import machine
from sluiceway.edge import EdgeProtocol

HERE = Path(__file__).resolve().parent

BODY = json.dumps(
    {
        "training_data": {"training_data": [[i % 7, i % 5, i % 3] for i in range(10)]},
        "query_input": {"query_input": [3, 4]},
    }
).encode()
REQUEST = (
    b"GET /classify HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: python-requests/2.32.3\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class MemoryTransport(asyncio.Transport):
    """Just enough transport for a protocol: counts what it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Read the body and answer, as the kiosk route does minus the model."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"29")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"classification_result":[1]}'})


HEAD, _, _ = REQUEST.partition(b"\r\n\r\n")
READS = {
    "one": [REQUEST],
    # As urllib3 (Locust's client) sends it: the head, then the body in a write of its own.
    "two": [HEAD + b"\r\n\r\n", BODY],
}


async def cost(protocol_class: type[HttpToolsProtocol], requests: int, reads: str) -> float:
    """Microseconds of CPU per request through ``protocol_class``, arriving in ``reads``."""
    config = Config(app, log_config=None, timeout_keep_alive=5)
    config.load()
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    started = time.process_time()
    chunks = READS[reads]
    for _ in range(requests):
        for chunk in chunks:
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        while state.tasks:  # noqa: ASYNC110 (the app's task ends within a few loop turns)
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    assert transport.written > requests * 29
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", choices=sorted(READS), default="one", help="reads per request")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"httptools": [], "edge": []}
    for _ in range(args.rounds):
        results["httptools"].append(uvloop.run(cost(HttpToolsProtocol, args.requests, args.reads)))
        results["edge"].append(uvloop.run(cost(EdgeProtocol, args.requests, args.reads)))
    base = statistics.median(results["httptools"])
    edge = statistics.median(results["edge"])
    out: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
    }
    out |= {"reads_per_request": args.reads, "us_per_request": results}
    out |= {"median_httptools": base, "median_edge": edge}
    out["edge_extra_us"] = edge - base
    name = "protocol_cost.json" if args.reads == "one" else f"protocol_cost-{args.reads}-reads.json"
    (HERE / name).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
