"""The peer benchmark's report: a table per workload, each server against the best peer, a plot."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PER_REQUEST = 5  # image URLs per bird request (workloads.BIRDS_PER_REQUEST)


def write(run: Any, peers: dict[str, Any], kiosk_bound: float, folder: Path) -> None:
    """``REPORT.md``, ``peers.png`` and ``results.json`` for ``run``."""
    measures = run.measures
    (folder / "results.json").write_text(
        json.dumps(
            {
                "date": run.date,
                "machine": run.machine,
                "kiosk_bound_rps": kiosk_bound,
                "model_cost_ms": run.model_cost_ms,
                "bird_model_cost_ms": run.bird_model_cost_ms,
                "image_server_cpu_ms_per_request": run.image_server_cpu_ms_per_request,
                "workload_dates": run.workload_dates,
                "measures": [asdict(m) for m in measures],
            },
            indent=1,
        )
        + "\n"
    )
    kiosk = _medians([m for m in measures if m.workload == "kiosk"])
    upload = _medians([m for m in measures if m.workload == "upload"])
    birds = _medians([m for m in measures if m.workload == "birds"])
    rounds = max((len(m.rounds) for m in kiosk + upload + birds), default=1)
    figure, (left, right, third) = plt.subplots(1, 3, figsize=(18, 4.8))
    if kiosk:
        names = [m.server for m in kiosk]
        left.bar(names, [m.rps for m in kiosk], color="C0")
        left.axhline(kiosk_bound, color="C3", linestyle="--", label=f"bound {kiosk_bound:.0f}/s")
        for index, m in enumerate(kiosk):
            left.annotate(f"p99 {m.p99_ms:.0f} ms", (index, m.rps), ha="center", va="bottom")
        left.set_ylabel("requests/s")
        left.set_title("kiosk: 250 connections, 10-20 ms think time (wrk)")
        left.legend()
    for server in dict.fromkeys(m.server for m in upload):
        points = [m for m in upload if m.server == server]
        right.plot([m.connections for m in points], [m.rps for m in points], "o-", label=server)
    right.set_xlabel("connections")
    right.set_ylabel("images/s")
    right.set_title("upload: POST /predict, MobileNetV2 (wrk)")
    if upload:
        right.legend()
    for server in dict.fromkeys(m.server for m in birds):
        points = [m for m in birds if m.server == server]
        third.plot(
            [m.connections for m in points],
            [m.rps * PER_REQUEST for m in points],
            "o-",
            label=server,
        )
    third.set_xlabel("connections")
    third.set_ylabel("images/s")
    third.set_title(f"birds: POST /, {PER_REQUEST} URLs per request (wrk)")
    if birds:
        third.legend()
    figure.tight_layout()
    figure.savefig(folder / "peers.png", dpi=110)

    def table(rows: list[Any], bound: float | None) -> str:
        head = (
            "| server | conns | req/s | "
            + ("of bound | " if bound else "")
            + "p50 ms | p95 ms | p99 ms | failures | server CPU ms/req | peak RSS MB | wrk CPU |"
        )
        sep = "|" + " --- |" * (head.count("|") - 1)
        lines = [head, sep]
        for m in rows:
            share = f"{m.rps / bound:.2f} | " if bound else ""
            spread = f" ({min(m.rounds):.0f}–{max(m.rounds):.0f})" if len(m.rounds) > 1 else ""
            lines.append(
                f"| {m.server} | {m.connections} | {m.rps:.0f}{spread} | {share}{m.p50_ms:.0f} | "
                f"{m.p95_ms:.0f} | {m.p99_ms:.0f} | {m.failures}"
                f"{' (' + m.error + ')' if m.error else ''} | "
                f"{m.server_cpu_ms_per_request:.2f} | {m.server_peak_rss_mb:.0f} | "
                f"{m.generator_cpu_share:.1%} |"
            )
        return "\n".join(lines)

    def against_best_peer(rows: list[Any]) -> str:
        lines = []
        for connections in sorted({m.connections for m in rows}):
            here = [m for m in rows if m.connections == connections]
            ours = next((m for m in here if m.server == "sluiceway"), None)
            peers = [m for m in here if not m.server.startswith("sluiceway")]
            others = [m for m in peers if m.server != "fastapi"] or peers
            if ours is None or not others:
                continue
            best = max(others, key=lambda m: m.rps)
            lines.append(
                f"- {connections} connections: Sluiceway {ours.rps:.0f}/s vs best peer "
                f"{best.server} {best.rps:.0f}/s (**{ours.rps / max(best.rps, 1e-9):.2f}×**), "
                f"p99 {ours.p99_ms:.0f} vs {best.p99_ms:.0f} ms, RSS {ours.server_peak_rss_mb:.0f}"
                f" vs {best.server_peak_rss_mb:.0f} MB"
            )
        return "\n".join(lines)

    bird_section = ""
    if birds:
        image_cpu = ", ".join(
            f"{name} {ms:.2f}" for name, ms in run.image_server_cpu_ms_per_request.items()
        )
        per_image = "\n".join(
            f"- {m.server}, {m.connections} connections: {m.rps * PER_REQUEST:.0f} images/s, "
            f"{m.server_cpu_ms_per_request / PER_REQUEST:.2f} ms server CPU per image "
            f"({m.server_cpu_ms_per_request / PER_REQUEST / run.bird_model_cost_ms[1]:.2f}× "
            "the model's own at batch 1)"
            for m in birds
            if run.bird_model_cost_ms
        )
        bird_section = f"""## Bird API (MISSION.md §2): `POST /` with {PER_REQUEST} image URLs, k=3

{_when(run, "birds")}
The photos are variants of the shipped bird photo on a local image server (uvicorn, one
process, sharing the two cores; its CPU ms per bird request, by server under test:
{image_cpu}); every URL is unique, so nothing is answered from a cache. A request counts as good
only with no failed image and the expected bird first. The model's own cost on ready pixels
(LiteRT, one thread): {_costs(run.bird_model_cost_ms)}.

{table(birds, None)}

{against_best_peer(birds)}

Per image:

{per_image}

"""

    how = "\n".join(
        f"- **{name}**: {peer.settings} ([docs]({peer.docs}))"
        for name, peer in peers.items()
        if any(m.server == name for m in measures)
    )
    text = f"""# Sluiceway beside the servers users would pick instead

{run.date}, {run.machine}. `python -m bench.peers.run`. Every server ran alone, one after
another ({rounds} round(s), each in the reverse order of the last; figures are medians over
rounds, the range in brackets), driven by `wrk` (C) with `bench/peers/load.lua`, which checks
every answer (`workloads.py` says how: a wrong label is a failure). The generator's own CPU
share of the two cores is in the last column: it shares them with the server.

## How each server was set up

{how}

## Kiosk (MISSION.md §1): 250 kiosks at once, 10–20 ms think time

{_when(run, "kiosk")}
Physical bound: 250 / (0.2 s call + 15 ms think) = {kiosk_bound:.0f} requests/s.

{table(kiosk, kiosk_bound)}

{against_best_peer(kiosk)}

## Upload page's `/predict`: JPEG in, ImageNet MobileNetV2, top-1

{_when(run, "upload")}
The model's own cost, measured in the same run on a ready tensor (ONNX Runtime, one thread):
{_costs(run.model_cost_ms)}. A server's CPU per request over it is what decoding, resizing, HTTP
and hand-offs add.

{table(upload, None)}

{against_best_peer(upload)}

{bird_section}![peers](peers.png)
"""
    (folder / "REPORT.md").write_text(text)
    print(text)


def _medians(rows: list[Any]) -> list[Any]:
    """One row per (server, connections): the median round by requests/s, with every round's."""
    groups: dict[tuple[str, int], list[Any]] = {}
    for row in rows:
        groups.setdefault((row.server, row.connections), []).append(row)
    merged = []
    for group in groups.values():
        ordered = sorted(group, key=lambda m: m.rps)
        middle = copy.copy(ordered[(len(ordered) - 1) // 2])
        middle.rounds = [m.rps for m in group]
        merged.append(middle)
    return merged


def _costs(costs: dict[Any, float]) -> str:
    return ", ".join(f"{ms:.1f} ms CPU per image at batch {batch}" for batch, ms in costs.items())


def _when(run: Any, workload: str) -> str:
    """Where a workload's figures come from an earlier run than the report's date, say so."""
    date = run.workload_dates.get(workload, run.date)
    if date == run.date:
        return ""
    return f"Measured {date} (an earlier run, kept with `--keep`).\n"
