"""A server paused past a connection's deadline reads what the client sent meanwhile first.

A stopped or frozen process (SIGSTOP, a cgroup freezer, a paused VM) wakes with its timers due
and the client's bytes waiting in the socket. uvloop, which ``sluiceway serve`` runs on, can
run the due timers first: the edge's header and body timers and uvicorn's keep-alive timer then
closed or refused a connection whose request had in fact arrived in time, and the client got a
reset instead of its answer. Tests stop a real ``sluiceway serve`` process (the stdlib loop the
other edge tests use reads sockets first and shows nothing) and shrink the timeouts to 2 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.redis_server import free_port

TIMEOUT_S = 2
PAUSE_S = TIMEOUT_S + 1.5
"""Longer than every timeout: each deadline passes while the server is stopped."""

PING = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``sluiceway serve`` with 2 s keep-alive, header and body timeouts."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "SLUICEWAY_KEEP_ALIVE_TIMEOUT_S": str(TIMEOUT_S),
        "SLUICEWAY_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "SLUICEWAY_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "SLUICEWAY_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    command = [sys.executable, "-m", "sluiceway", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60.0
        while not _healthy(port):
            assert process.poll() is None, "the server exited while starting"
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            time.sleep(0.1)
        yield process, port
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _answer(sock: socket.socket) -> bytes:
    """The response's head, or what the client sees when the server hangs up instead."""
    sock.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data or b"<closed without an answer>"
            data += chunk
    except ConnectionResetError:
        return b"<reset>"
    return data.split(b"\r\n\r\n")[0]


def _paused(process: subprocess.Popen[bytes], send: bytes, sock: socket.socket) -> None:
    """Stop the server, send ``send`` at once, and let it go after every deadline passed."""
    process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.2)
        sock.sendall(send)
        time.sleep(PAUSE_S)
    finally:
        process.send_signal(signal.SIGCONT)


def test_a_request_sent_on_a_kept_alive_connection_during_a_pause_is_answered(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(PING)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT_S / 4)  # idle a while; its keep-alive time runs out while stopped
        _paused(process, PING, sock)
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_a_first_request_sent_during_a_pause_is_answered(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        time.sleep(0.2)  # accepted: the connection's header clock runs
        _paused(process, PING, sock)
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_a_body_finished_during_a_pause_is_answered(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = server
    body = (
        b'{"training_data": {"training_data": [[1, 2, 0], [2, 3, 1], [3, 4, 1], [-5, -5, 2]]},'
        b' "query_input": {"query_input": [2, 3]}}'
    )
    head = (
        b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.3)  # read: the body's clock runs
        _paused(process, body[10:], sock)
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_a_client_that_is_slow_while_the_server_runs_is_still_cut_off(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 408")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(PING)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT_S + 0.5)
        assert _answer(sock) == b"<closed without an answer>"
