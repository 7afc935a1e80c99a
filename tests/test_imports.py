"""What a process imports: a library a model kind needs only where that kind runs."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imports(code: str, module: str = "sklearn") -> bool:
    """Whether running ``code`` in a fresh interpreter leaves ``module`` imported."""
    program = f"import sys\n{code}\nprint({module!r} in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip().splitlines()[-1] == "True"


def test_a_split_mode_api_node_never_imports_scikit_learn() -> None:
    # An API node routes kiosk jobs to workers and never fits a k-NN: 88 MB it does not need.
    assert not _imports(
        "from sluiceway.app import create_app\n"
        "from sluiceway.config import Settings\n"
        "create_app(Settings(broker_url='redis://127.0.0.1:1/0'))"
    )


def test_a_server_running_the_kiosk_imports_it_before_its_first_request() -> None:
    # Imported at start-up, not on the first kiosk request (1.4 s with the event loop held).
    assert _imports(
        "import asyncio\n"
        "from sluiceway.app import create_app\n"
        "from sluiceway.config import Settings\n"
        "app = create_app(Settings())\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "asyncio.run(main())"
    )


def test_grpc_is_imported_only_where_its_port_is_set() -> None:
    pytest.importorskip("grpc", reason="the grpc extra is not installed (pip install -e '.[grpc]')")
    # grpcio and the protocol's message classes: an optional extra, loaded only when asked for.
    started = (
        "import asyncio\n"
        "from sluiceway.app import create_app\n"
        "from sluiceway.config import Settings\n"
        "app = create_app(Settings(grpc_port={port}))\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "asyncio.run(main())"
    )
    assert not _imports(started.format(port=None), module="grpc")
    assert _imports(started.format(port=0), module="grpc")
