"""Checks before a server starts: settings it cannot mean, and the address it is to listen on."""

from __future__ import annotations

import math
import socket

from jointspace.errors import UsageError


def upload_bytes(max_upload_mb: float) -> int:
    """--max-upload-mb as bytes; ValueError naming the flag unless it is a finite size of at least one byte."""
    if not (math.isfinite(max_upload_mb) and max_upload_mb * 1024 * 1024 >= 1):
        raise UsageError(f"--max-upload-mb {max_upload_mb}: must be a finite size of at least one byte")
    return int(max_upload_mb * 1024 * 1024)


def check_settings(token: str | None, max_upload_bytes: float, max_k: int, max_batch: int) -> None:
    """ValueError naming the setting: an empty token (it would turn auth off), limits below 1."""
    if token is not None and not token.strip():
        raise UsageError("--token: empty; give a token, or leave --token out (and JOINTSPACE_TOKEN unset) "
                         "to serve without one")
    for name, value in (("--max-k", max_k), ("--max-batch", max_batch), ("--max-upload-mb", max_upload_bytes)):
        if not value >= 1:
            raise UsageError(f"{name} {value}: must be at least 1")


def check_address(host: str, port: int) -> None:
    """OSError naming host:port unless this process can listen there now (a valid port, a local address
    not in use), bound the way uvicorn binds it (IPv6 when the host has a colon)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: not a TCP port (1..65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed port in TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as err:
            raise OSError(f"{host}:{port}: cannot listen there ({err.strerror or err})") from None
