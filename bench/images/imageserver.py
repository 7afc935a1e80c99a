"""A static file server for the benchmark's images and model, on 127.0.0.1 (uvicorn, one process).

python -m bench.images.imageserver FOLDER --port PORT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build(folder: Path) -> Starlette:
    """Serve every file of ``folder`` from memory at ``/<name>``."""
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}

    async def serve(request: Request) -> Response:
        data = files.get(request.path_params["name"])
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="application/octet-stream")

    return Starlette(routes=[Route("/{name}", serve)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build(args.folder), host="127.0.0.1", port=args.port, log_level="warning", backlog=4096
    )


if __name__ == "__main__":
    main()
