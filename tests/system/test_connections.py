"""Idle and slow connections cannot take the hub away from everyone else: a few seconds of load against a
real `quiver serve` with a small connection limit and header timeout."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx

from tests.support.servers import free_port, serve_process

LIMIT = 120
HEADER_TIMEOUT_S = 2.0


def test_idle_and_slow_connections_up_to_the_limit_leave_the_hub_answering(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(
        QUIVER_HOME=str(tmp_path / "home"),
        QUIVER_PORT=str(port),
        QUIVER_MAX_CONNECTIONS=str(LIMIT),
        QUIVER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
    )
    with serve_process(env) as url:
        held: list[socket.socket] = []
        try:
            for i in range(LIMIT - 10):  # half idle (nothing sent), half sending a request head slowly
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i % 2:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                held.append(sock)
            for sock in held[1::2]:
                sock.sendall(b"X-Slow: 1\r\n")  # still no end of the head
            started = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0

            # 20 more: 10 fit under the limit (and are closed when their head does not come in time), the
            # other 10 are answered 503 at once and closed
            over = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
            answers = [recv_all(sock) for sock in over]
            assert all(closed for _, closed in answers)
            busy = [data for data, _ in answers if data]
            assert len(busy) == 10 and all(a.startswith(b"HTTP/1.1 503") and b'"busy"' in a for a in busy)
            for sock in over:
                sock.close()

            time.sleep(HEADER_TIMEOUT_S + 1.5)  # every held connection is closed by the hub by now
            assert all(recv_all(sock, timeout=2) == (b"", True) for sock in held)
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            for sock in held:
                sock.close()


def recv_all(sock: socket.socket, timeout: float = 5) -> tuple[bytes, bool]:
    """(what the peer sent, whether it closed the connection within `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True
