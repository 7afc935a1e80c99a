"""The image download client's CPU per photo: Sluiceway's fetcher beside the httpx it replaced.

    python -m bench.fetch.run [--downloads 800] [--rounds 3]

One local image server (``bench/images/imageserver.py``, its own process) serves 16 JPEG photos
of 60-250 KB; each client downloads ``downloads`` distinct URLs of them at 1, 16 and 32 in flight,
in this process on uvloop (as the server runs), one client after another, the order reversed
every round. Measured: this process's CPU time per download (the image server's is not counted),
as a ratio to the httpx client in the same round. The clients:

- ``httpx (before)``: the client ``inputs/fetch.py`` used until issue 16, as it was configured:
  ``httpx.AsyncClient`` on a ``httpcore`` pool of 32 connections, streamed reads; no address
  checks (those cost the same on either client);
- ``aiohttp alone``: aiohttp's session with the same pool size, streamed reads, no checks;
- ``ImageFetcher``: Sluiceway's downloader as shipped (aiohttp, every check: address pinning,
  per-host and process slots, size cap, type sniffing, redirects by hand).

Writes ``REPORT.md``, ``fetch.png`` and ``results.json`` here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpcore
import httpx
import matplotlib
import numpy as np
import uvloop
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadtest import CHECKOUT_PATH, REPO, free_port, machine, stop, wait_for_port
from sluiceway.inputs.addresses import AllowList
from sluiceway.inputs.fetch import ImageFetcher

HERE = Path(__file__).resolve().parent
IN_FLIGHT = (1, 16, 32)
POOL = 32
CLIENTS = ("httpx (before)", "aiohttp alone", "ImageFetcher")

Download = Callable[[str], Awaitable[bytes]]


def photos(count: int = 16, seed: int = 5) -> list[bytes]:
    """JPEG photos of 60-250 KB: smooth colour fields with noise, 480-1024 px wide."""
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        width = int(rng.integers(480, 1025))
        height = width * 3 // 4
        ys, xs = np.mgrid[0:height, 0:width]
        base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / width], axis=-1)
        noise = rng.normal(0, 18, (height, width, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
        made.append(buffer.getvalue())
    return made


class Httpx:
    """The httpx client as ``inputs/fetch.py`` configured it before issue 16."""

    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=POOL,
            max_keepalive_connections=POOL,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=httpcore.AnyIOBackend(),
        )
        self.client = httpx.AsyncClient(
            transport=transport, timeout=10.0, follow_redirects=False, trust_env=False
        )

    async def download(self, url: str) -> bytes:
        async with self.client.stream("GET", url) as response:
            chunks = [chunk async for chunk in response.aiter_bytes()]
        return b"".join(chunks)

    async def close(self) -> None:
        await self.client.aclose()


class Aiohttp:
    """aiohttp's session alone, the same pool size, no checks."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL))

    async def download(self, url: str) -> bytes:
        async with self.session.get(url, allow_redirects=False) as response:
            chunks = [chunk async for chunk in response.content.iter_any()]
        return b"".join(chunks)

    async def close(self) -> None:
        await self.session.close()


class Fetcher:
    """Sluiceway's downloader with every check, the local server allowed."""

    def __init__(self) -> None:
        self.fetcher = ImageFetcher(
            concurrency=POOL, per_host=POOL, allow=AllowList.parse("127.0.0.1:*")
        )

    async def download(self, url: str) -> bytes:
        return await self.fetcher.fetch(url)

    async def close(self) -> None:
        await self.fetcher.aclose()


async def cpu_ms_per_download(
    name: str, base: str, count: int, in_flight: int, sizes: dict[str, int]
) -> float:
    """This process's CPU per download for ``count`` distinct URLs, ``in_flight`` at a time."""
    kinds: dict[str, type[Httpx | Aiohttp | Fetcher]] = {
        "httpx (before)": Httpx,
        "aiohttp alone": Aiohttp,
        "ImageFetcher": Fetcher,
    }
    client = kinds[name]()
    try:
        names = list(sizes)
        urls = [f"{base}/{names[i % len(names)]}?n={i}" for i in range(count)]
        await client.download(urls[0])  # the first connection and any lazy set-up
        gate = asyncio.Semaphore(in_flight)

        async def one(url: str) -> None:
            async with gate:
                data = await client.download(url)
            expected = sizes[url.split("/")[-1].split("?")[0]]
            if len(data) != expected:
                raise RuntimeError(f"{name}: {len(data)} bytes from {url}, not {expected}")

        started = time.process_time()
        await asyncio.gather(*(one(url) for url in urls))
        return (time.process_time() - started) * 1000 / count
    finally:
        await client.close()


def plot(results: dict[str, dict[int, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(CLIENTS)
    for index, name in enumerate(CLIENTS):
        xs = [x + index * width for x in range(len(IN_FLIGHT))]
        values = [results[name][n] for n in IN_FLIGHT]
        ax.bar(xs, values, width, label=name)
        for x, value in zip(xs, values, strict=True):
            ax.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([x + width for x in range(len(IN_FLIGHT))], [f"{n} in flight" for n in IN_FLIGHT])
    ax.set_ylabel("client CPU ms per download")
    ax.set_title("Downloading a photo from a local server (median over rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--downloads", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    date = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    rounds: dict[str, dict[int, list[float]]] = {c: {n: [] for n in IN_FLIGHT} for c in CLIENTS}
    with tempfile.TemporaryDirectory() as folder:
        sizes = {}
        for index, data in enumerate(photos()):
            (Path(folder) / f"photo-{index}.jpg").write_bytes(data)
            sizes[f"photo-{index}.jpg"] = len(data)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.images.imageserver", folder, "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": CHECKOUT_PATH},
        )
        try:
            wait_for_port(port)
            base = f"http://127.0.0.1:{port}"
            order = list(CLIENTS)
            for round_ in range(args.rounds):
                for name in order if round_ % 2 == 0 else reversed(order):
                    for n in IN_FLIGHT:
                        ms = uvloop.run(cpu_ms_per_download(name, base, args.downloads, n, sizes))
                        rounds[name][n].append(ms)
                        print(f"{name}, {n} in flight: {ms:.3f} ms", flush=True)
        finally:
            stop(server)
    median = {c: {n: statistics.median(rounds[c][n]) for n in IN_FLIGHT} for c in CLIENTS}
    plot(median, HERE / "fetch.png")
    (HERE / "results.json").write_text(
        json.dumps(
            {
                "date": date,
                "machine": machine(),
                "downloads": args.downloads,
                "rounds": {c: {str(n): v for n, v in rows.items()} for c, rows in rounds.items()},
                "median_cpu_ms": {c: {str(n): v for n, v in m.items()} for c, m in median.items()},
            },
            indent=2,
        )
    )
    baseline = median[CLIENTS[0]]
    lines = [
        "# Image download client: CPU per photo",
        "",
        f"{date}, {machine()}. `python -m bench.fetch.run` ({args.downloads} distinct URLs per "
        f"client and level, {args.rounds} rounds, order reversed each round; medians, the range "
        "in brackets). The machine was shared with other work; the ratios, measured in the "
        "same run, are the figures to read.",
        "",
        "| client | in flight | CPU ms per download | vs httpx (before) |",
        "| --- | --- | --- | --- |",
    ]
    for name in CLIENTS:
        for n in IN_FLIGHT:
            low, high = min(rounds[name][n]), max(rounds[name][n])
            lines.append(
                f"| {name} | {n} | {median[name][n]:.3f} ({low:.3f}–{high:.3f}) | "
                f"{median[name][n] / baseline[n]:.2f}× |"
            )
    how = (__doc__ or "").split("\n\n")[2:-1]  # the set-up and the clients, not the usage
    lines += ["", "\n\n".join(how), "", "![fetch](fetch.png)", ""]
    (HERE / "REPORT.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
