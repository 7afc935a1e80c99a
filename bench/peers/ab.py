"""Sluiceway against Sluiceway: CPU per image of two source trees on the image workloads.

    python -m bench.peers.ab --trees before=/tmp/before/src after=src [--workloads upload birds]

A change that claims to cut CPU per image is judged here before a full ``bench.peers.run``: each
tree's ``sluiceway serve`` (its ``src`` folder first on ``PYTHONPATH``, this checkout's
environment otherwise) takes the peer benchmark's own loads (``run.prepare``,
``run.prepare_birds``: ``wrk`` with ``load.lua``, every answer checked), one server at a time,
rounds in alternating order. Right before each server starts, the model's own cost on a ready
tensor is measured again (``run.model_cost_ms``, ``run.bird_model_cost_ms``), so every row's
ratio is to a cost measured next to it: on a shared machine both move with the load. Per row:
images/s, p95, failures, server CPU ms per image and its ratio to the model's cost at batch 1.
A tree for ``before`` is one ``git archive <commit> src | tar -x -C /tmp/before`` away.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.loadtest import free_port, stop, wait_for_port
from bench.peers import run, workloads

IMAGES_PER_REQUEST = {"upload": 1, "birds": workloads.BIRDS_PER_REQUEST}


def serve(src: Path, env: dict[str, str], folder: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """``sluiceway serve`` with ``src`` first on the path, once it listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)],
        cwd=folder,
        env={
            **os.environ,
            **env,
            "PYTHONPATH": f"{src}{os.pathsep}{run.REPO}",
            "SLUICEWAY_UPLOAD_DIR": str(folder / "uploads"),
            "SLUICEWAY_FEEDBACK_DIR": str(folder / "feedback"),
        },
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, timeout_s=120)
    return port, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", nargs="+", required=True, help="NAME=SRC_FOLDER, two or more")
    parser.add_argument("--workloads", nargs="+", default=["upload", "birds"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--conns", type=int, nargs="+", default=[8, 32], help="upload")
    parser.add_argument("--bird-conns", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = parser.parse_args()
    trees = {name: Path(src).resolve() for name, src in (t.split("=", 1) for t in args.trees)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        _, upload, env = run.prepare(folder)
        models = workloads.shared_models()
        birds = None
        if "birds" in args.workloads:
            if models is None:
                raise SystemExit("birds: the bird model is not in ../shared/models")
            birds = run.prepare_birds(folder, models)
        try:
            for round_ in range(args.rounds):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for name in order:
                    for workload in args.workloads:
                        rows += measure_tree(name, trees[name], workload, upload, env, birds, args)
        finally:
            if birds is not None:
                stop(birds.image_server)
    summarise(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def measure_tree(
    name: str,
    src: Path,
    workload: str,
    upload: run.Load,
    env: dict[str, str],
    birds: run.BirdSetup | None,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """One server of ``src`` on ``workload`` at each connection count; the model cost first."""
    if workload == "upload":
        load, conns, cost = upload, args.conns, run.model_cost_ms()[1]
    else:
        assert birds is not None
        models = workloads.shared_models()
        assert models is not None
        load, conns = birds.load, args.bird_conns
        env = {**env, **birds.env}
        cost = run.bird_model_cost_ms(models)[1]
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        port, process = serve(src, env, Path(temp))
        try:
            run.wait_answering(port, load.requests)
            run.measure(name, workload, process, port, load, conns[0], 4)  # warm-up
            for connections in conns:
                result = run.measure(name, workload, process, port, load, connections, args.seconds)
                images = IMAGES_PER_REQUEST[workload]
                per_image = result.server_cpu_ms_per_request / images
                rows.append(
                    {
                        "tree": name,
                        "workload": workload,
                        "connections": connections,
                        "images_per_s": round(result.rps * images, 1),
                        "p95_ms": result.p95_ms,
                        "failures": result.failures,
                        "cpu_ms_per_image": round(per_image, 2),
                        "model_ms_per_image": round(cost, 2),
                        "ratio": round(per_image / cost, 3),
                    }
                )
                print("ROW", json.dumps(rows[-1]), flush=True)
        finally:
            run.stop_tree(process)
    return rows


def summarise(rows: list[dict[str, Any]]) -> None:
    """Per tree, workload and connection count: the median ratio and CPU ms over rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["workload"], row["tree"], row["connections"]), []).append(row)
    print("| workload | tree | conns | images/s | CPU ms/image | model ms | ratio (rounds) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (workload, tree, connections), group in sorted(groups.items()):
        ratios = ", ".join(f"{row['ratio']:.2f}" for row in group)
        print(
            f"| {workload} | {tree} | {connections} "
            f"| {statistics.median(r['images_per_s'] for r in group):.0f} "
            f"| {statistics.median(r['cpu_ms_per_image'] for r in group):.2f} "
            f"| {statistics.median(r['model_ms_per_image'] for r in group):.2f} "
            f"| {statistics.median(r['ratio'] for r in group):.2f} ({ratios}) |"
        )


if __name__ == "__main__":
    main()
