"""Triton's logging extension (``GET``/``POST /v2/logging``, gRPC ``LogSettings``), driven by
``tritonclient.http`` and ``tritonclient.grpc`` against a server on a loopback port, and judged
by what Sluiceway's handler writes.

The server runs in a thread of the test process, so that a test can configure logging as
``sluiceway serve`` does (into a buffer), make records from a Sluiceway logger and read what is
written. The log settings are the process's: each test puts its logging back (``start``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton_http
import uvicorn
from tritonclient.utils import InferenceServerException

from sluiceway import logs
from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings
from tests.redis_server import free_port

TOKEN = "logging-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_GRPC = importlib.util.find_spec("grpc") is not None
_EXTRA = "needs the grpc extra (pip install -e '.[grpc]')"

AT_INFO = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
"""Triton's defaults, and the state ``SLUICEWAY_LOG_LEVEL=INFO`` (the default) starts in."""


class Served:
    def __init__(self, address: str, grpc_address: str | None) -> None:
        self.address = address
        self.url = f"http://{address}"
        self.grpc_address = grpc_address


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The app with an admin token (and gRPC, with the extra) served by uvicorn in a thread."""
    grpc_port = free_port() if _GRPC else None
    app = create_app(fast_settings(admin_token=TOKEN, grpc_port=grpc_port))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    host, port = listener.getsockname()
    try:
        yield Served(f"{host}:{port}", f"127.0.0.1:{grpc_port}" if grpc_port else None)
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


@pytest.fixture
def start() -> Iterator[Callable[..., io.StringIO]]:
    """``start(level)``: logging configured as ``sluiceway serve`` configures it at
    ``SLUICEWAY_LOG_LEVEL=level``, written to the buffer it returns. Afterwards the process's
    logging is put back as it was, and with it every log setting (they live on the handler)."""
    root, ours = logging.getLogger(), logging.getLogger("sluiceway")
    libraries = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    handlers, levels = root.handlers[:], [root.level, ours.level, *(x.level for x in libraries)]

    def configure(level: str = "INFO") -> io.StringIO:
        stream = io.StringIO()
        logs.configure(level, stream)
        return stream

    yield configure
    root.handlers[:] = handlers
    for each, level in zip([root, ours, *libraries], levels, strict=True):
        each.setLevel(level)


@pytest.fixture
def http(served: Served) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(served.address)
    yield client
    client.close()


@pytest.fixture
def grpc_client(served: Served) -> Iterator[Any]:
    triton_grpc = pytest.importorskip("tritonclient.grpc", reason=_EXTRA)
    client = triton_grpc.InferenceServerClient(served.grpc_address)
    yield client
    client.close()


def say(level: int, logger: str = "sluiceway.app") -> str:
    """Make a record at ``level`` from ``logger`` (a Sluiceway logger by default); its text."""
    text = f"record-{uuid.uuid4().hex}"
    logging.getLogger(logger).log(level, text)
    return text


def grpc_values(response: Any) -> dict[str, Any]:
    """A ``LogSettingsResponse`` as ``{name: value}``, each value from the field it is in."""
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in
            response.settings.items()}  # fmt: skip


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("INFO", {}),
        ("DEBUG", {"log_verbose_level": 1}),
        ("WARNING", {"log_info": False}),
        ("ERROR", {"log_info": False, "log_warning": False}),
    ],
)
def test_sluiceway_log_level_is_the_state_a_client_reads_first(
    http: triton_http.InferenceServerClient,
    start: Callable[..., io.StringIO],
    level: str,
    expected: dict[str, Any],
) -> None:
    start(level)
    assert http.get_log_settings() == {**AT_INFO, **expected}
    assert "logging" in http.get_server_metadata()["extensions"]


def test_log_info_off_silences_info_and_not_warnings(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start()
    answer = http.update_log_settings({"log_info": False}, headers=AUTH)
    assert answer == {**AT_INFO, "log_info": False}  # the whole object, as Triton answers
    info, warning, error = say(logging.INFO), say(logging.WARNING), say(logging.ERROR)
    assert info not in written.getvalue()
    assert warning in written.getvalue() and error in written.getvalue()
    # The change itself is written (at WARNING, so that it shows while INFO is off).
    assert "log settings changed by a client: log_info=False" in written.getvalue()

    assert http.update_log_settings({"log_warning": False, "log_info": True}, headers=AUTH) == {
        **AT_INFO,
        "log_warning": False,
    }
    info, warning = say(logging.INFO), say(logging.WARNING)
    assert info in written.getvalue() and warning not in written.getvalue()
    assert http.get_log_settings() == {**AT_INFO, "log_warning": False}


def test_log_error_off_silences_errors_and_critical_and_the_switches_hold_for_any_logger(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start()
    http.update_log_settings({"log_error": False, "log_info": False}, headers=AUTH)
    error, critical = say(logging.ERROR), say(logging.CRITICAL)
    warning = say(logging.WARNING)
    library_info = say(logging.INFO, "uvicorn.error")  # another library's, through the root
    library_warning = say(logging.WARNING, "uvicorn.error")
    assert error not in written.getvalue() and critical not in written.getvalue()
    assert library_info not in written.getvalue()
    assert warning in written.getvalue() and library_warning in written.getvalue()


def test_every_change_is_written_even_one_made_with_every_level_off(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start()
    changes = [
        {"log_warning": False},
        {"log_error": False, "log_info": False},  # now nothing is written but the changes
        {"log_format": "ISO8601"},
        {"log_format": "ISO8601"},  # the same again: not held back as a repeat
        {"log_error": True, "log_warning": True},
    ]
    for change in changes:
        http.update_log_settings(change, headers=AUTH)
    lines = [line for line in written.getvalue().splitlines() if "log settings changed" in line]
    assert len(lines) == len(changes), lines
    assert lines[1].endswith("log_error=False, log_info=False")


def test_a_critical_start_up_level_keeps_critical_records(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start("CRITICAL")
    assert http.get_log_settings() == {
        **AT_INFO, "log_info": False, "log_warning": False, "log_error": True
    }  # fmt: skip
    critical, error = say(logging.CRITICAL), say(logging.ERROR)
    assert critical in written.getvalue()
    assert error not in written.getvalue()  # below the start-up level: never made


def test_a_level_below_the_start_up_level_can_be_switched_on(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start("ERROR")
    assert say(logging.WARNING) not in written.getvalue()
    http.update_log_settings({"log_info": True}, headers=AUTH)
    info, warning = say(logging.INFO), say(logging.WARNING)
    assert info in written.getvalue() and warning not in written.getvalue()  # still off


def test_a_verbose_level_writes_debug_records_of_sluiceways_loggers_only(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start()
    quiet = say(logging.DEBUG)
    assert (
        http.update_log_settings({"log_verbose_level": 2}, headers=AUTH)["log_verbose_level"] == 2
    )
    debug = say(logging.DEBUG, "sluiceway.runtime.batcher")
    library = say(logging.DEBUG, "some.library")  # keeps SLUICEWAY_LOG_LEVEL's INFO
    assert debug in written.getvalue()
    assert quiet not in written.getvalue() and library not in written.getvalue()
    http.update_log_settings({"log_verbose_level": 0}, headers=AUTH)
    assert say(logging.DEBUG) not in written.getvalue()


def test_log_format_iso8601_writes_utc_timestamps(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO]
) -> None:
    written = start()
    default = say(logging.WARNING)
    http.update_log_settings({"log_format": "ISO8601"}, headers=AUTH)
    iso = say(logging.WARNING)
    lines = {line.rsplit(" ", 1)[1]: line for line in written.getvalue().splitlines()}
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING ", lines[default])
    stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z WARNING ", lines[iso])
    assert stamp is not None
    written_at = dt.datetime.fromisoformat(stamp[1]).replace(tzinfo=dt.UTC)
    assert abs(dt.datetime.now(dt.UTC) - written_at) < dt.timedelta(seconds=30)
    assert http.get_log_settings()["log_format"] == "ISO8601"
    http.update_log_settings({"log_format": "default"}, headers=AUTH)
    back = say(logging.WARNING)
    assert re.match(r"\d{4}-\d\d-\d\d \d", written.getvalue().splitlines()[-1])
    assert written.getvalue().splitlines()[-1].endswith(back)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"log_info": 1}, "'log_info' must be true or false"),
        ({"log_warning": "false"}, "'log_warning' must be true or false"),
        ({"log_verbose_level": -1}, "'log_verbose_level' must be a whole number"),
        ({"log_verbose_level": 2**32}, "'log_verbose_level' must be a whole number"),
        ({"log_verbose_level": 1.5}, "'log_verbose_level' must be a whole number"),
        ({"log_verbose_level": True}, "'log_verbose_level' must be a whole number"),
        ({"log_format": "iso8601"}, "'log_format' must be 'default' or 'ISO8601'"),
        ({"log_file": "/tmp/sluiceway.log"}, "'log_file' cannot be set"),
        ({"log_warnings": False}, "unknown log setting 'log_warnings'"),
        # Checked whole before any of it applies: log_info stays on.
        ({"log_info": False, "log_error": "no"}, "'log_error' must be true or false"),
    ],
)
def test_a_bad_setting_is_a_400_naming_it_and_changes_nothing(
    http: triton_http.InferenceServerClient,
    start: Callable[..., io.StringIO],
    change: dict[str, Any],
    named: str,
) -> None:
    start()
    with pytest.raises(InferenceServerException, match=re.escape(named)) as raised:
        http.update_log_settings(change, headers=AUTH)
    assert raised.value.status() == "400"
    assert http.get_log_settings() == AT_INFO


def test_what_changes_nothing_is_accepted(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO], served: Served
) -> None:
    start()
    # The GET's own answer sent back (log_file as it is), nulls (Triton leaves those settings),
    # an empty object and an empty body.
    assert http.update_log_settings(http.get_log_settings(), headers=AUTH) == AT_INFO
    assert http.update_log_settings({"log_info": None}, headers=AUTH) == AT_INFO
    assert http.update_log_settings({}, headers=AUTH) == AT_INFO
    assert httpx.post(f"{served.url}/v2/logging", headers=AUTH).json() == AT_INFO


@pytest.mark.parametrize("body", [b"[]", b'"log_info"', b"{not json", b"null"])
def test_a_body_that_is_not_an_object_is_a_400(
    served: Served, start: Callable[..., io.StringIO], body: bytes
) -> None:
    start()
    answer = httpx.post(f"{served.url}/v2/logging", content=body, headers=AUTH)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "JSON object of log settings" in error or error.startswith("the body is not JSON")


def test_changes_need_the_admin_token_and_reading_does_not(
    http: triton_http.InferenceServerClient, start: Callable[..., io.StringIO], served: Served
) -> None:
    start()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(InferenceServerException, match="SLUICEWAY_ADMIN_TOKEN") as raised:
            http.update_log_settings({"log_info": False}, headers=headers)
        assert raised.value.status() == "401"
    refused = httpx.post(f"{served.url}/v2/logging", json={"log_info": False})
    assert refused.headers["www-authenticate"] == 'Bearer realm="sluiceway logging"'
    assert http.get_log_settings() == AT_INFO  # no token, and nothing changed


async def test_without_an_admin_token_changes_are_off() -> None:
    async with app_client(create_app(fast_settings())) as client:
        refused = await client.post("/v2/logging", json={"log_verbose_level": 1})
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("changing log settings is off: set SLUICEWAY_ADMIN")


async def test_a_process_whose_logging_is_its_hosts_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As under pytest: the app embedded in a program that configured logging itself (without
    # the handler a test that ran the command may have left).
    root = logging.getLogger()
    theirs = [each for each in root.handlers if not isinstance(each, logs.SluicewayHandler)]
    monkeypatch.setattr(root, "handlers", theirs)
    async with app_client(create_app(fast_settings())) as client:
        answer = await client.get("/v2/logging")
    assert answer.status_code == 409
    assert "not by 'sluiceway serve'" in answer.json()["error"]


# Over gRPC: the same settings, checks and token, as tritonclient.grpc and the bare stub send them.


def test_grpc_reads_and_changes_the_same_settings(
    grpc_client: Any,
    http: triton_http.InferenceServerClient,
    start: Callable[..., io.StringIO],
) -> None:
    written = start()
    assert grpc_values(grpc_client.get_log_settings()) == AT_INFO
    auth = {"authorization": f"Bearer {TOKEN}"}
    changed = grpc_client.update_log_settings(
        {"log_info": False, "log_verbose_level": 1, "log_format": "ISO8601"}, headers=auth
    )
    expected = {**AT_INFO, "log_info": False, "log_verbose_level": 1, "log_format": "ISO8601"}
    assert grpc_values(changed) == expected == http.get_log_settings()
    info, debug, warning = say(logging.INFO), say(logging.DEBUG), say(logging.WARNING)
    assert info not in written.getvalue()
    assert debug in written.getvalue() and warning in written.getvalue()
    # tritonclient sends None as a value with no field set: left as it is.
    assert grpc_values(grpc_client.update_log_settings({"log_info": None}, headers=auth)) == (
        expected
    )


def test_grpc_refuses_what_http_refuses_with_its_codes(
    grpc_client: Any, start: Callable[..., io.StringIO]
) -> None:
    start()
    auth = {"authorization": f"Bearer {TOKEN}"}
    for change, named in [
        ({"log_file": "/tmp/sluiceway.log"}, "'log_file' cannot be set"),
        ({"log_format": "json"}, "'log_format' must be"),
        ({"verbose": True}, "unknown log setting 'verbose'"),
    ]:
        with pytest.raises(InferenceServerException, match=re.escape(named)) as raised:
            grpc_client.update_log_settings(change, headers=auth)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="Bearer") as raised:
        grpc_client.update_log_settings({"log_info": False})
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    assert grpc_values(grpc_client.get_log_settings()) == AT_INFO


def test_grpc_a_value_of_the_wrong_type_is_invalid(
    served: Served, start: Callable[..., io.StringIO]
) -> None:
    """What tritonclient never sends (it picks each setting's type): the bare stub."""
    grpc = pytest.importorskip("grpc", reason=_EXTRA)
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    start()
    request = service_pb2.LogSettingsRequest()
    request.settings["log_info"].uint32_param = 1
    with grpc.insecure_channel(served.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.LogSettings(request, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "'log_info' must be true or false"


def test_each_worker_process_of_sluiceway_serve_starts_from_its_log_level(tmp_path: Path) -> None:
    """Through the command itself, with two worker processes (each spawned fresh by uvicorn)."""
    port = free_port()
    env = {
        **os.environ,
        "SLUICEWAY_WORKERS": "2",
        "SLUICEWAY_PORT": str(port),
        "SLUICEWAY_LOG_LEVEL": "WARNING",
        "SLUICEWAY_ADMIN_TOKEN": TOKEN,
    }
    with (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "sluiceway", "serve"], env=env, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 60
        answers = []
        while len(answers) < 6:
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/v2/logging", timeout=2))
            except httpx.TransportError:
                time.sleep(0.2)
        # A change would reach one process of two: refused, saying what to do instead.
        refused = httpx.post(
            f"http://127.0.0.1:{port}/v2/logging", json={"log_info": True}, headers=AUTH
        )
    finally:
        process.terminate()
        process.wait(30)
    assert all(answer.json() == {**AT_INFO, "log_info": False} for answer in answers)
    assert refused.status_code == 409
    assert "SLUICEWAY_WORKERS=2" in refused.json()["error"]
