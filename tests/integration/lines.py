"""Raw client lines on a socket of their own, for tests that must see the wire."""

from __future__ import annotations

import socket


def connect(address: str, timeout_s: float = 30.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def ask(address: str, line: str, timeout_s: float = 30.0) -> str:
    """One request on its own connection: the reply line."""
    with connect(address, timeout_s) as conn:
        conn.sendall(line.encode() + b"\n")
        return read_line(conn)


def read_lines(conn: socket.socket, count: int) -> list[str]:
    """The next ``count`` lines on conn, none read past (replies that come later stay
    in the socket)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return [line.strip() for line in data.decode().splitlines()]


def pipelined(address: str, lines: list[str], timeout_s: float = 30.0) -> list[str]:
    """Send every line on one connection at once (a pipelining client): the replies."""
    with connect(address, timeout_s) as conn:
        conn.sendall("".join(f"{line}\r\n" for line in lines).encode())
        return read_lines(conn, len(lines))
