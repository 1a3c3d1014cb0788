"""`jointspace serve INDEX`: the index over HTTP (jointspace.serve's app run by uvicorn; mounted by
jointspace.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly

console = Console()


@friendly(console)
def serve(
    index: Annotated[Path, typer.Argument(help="index folder")],
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 1..65535")] = 8000,
    run: Annotated[Path | None, typer.Option(help="the index's run, if it moved (fingerprint-checked)")] = None,
    token: Annotated[str | None, typer.Option(envvar="JOINTSPACE_TOKEN", help="require 'Authorization: Bearer "
                                              "TOKEN' on every route but /healthz and the page (docs included)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body")] = 8.0,
    max_k: Annotated[int, typer.Option(help="most results a query may ask for (at least 1)")] = 100,
    max_batch: Annotated[int, typer.Option(help="most queries in one request (at least 1)")] = 32,
) -> None:
    """Serve the index over HTTP: POST /search, GET /items/{key}, /healthz, /stats, /docs and a web page."""
    import uvicorn

    from jointspace.serve.app import create_app
    from jointspace.serve.launch import check_address, check_settings, upload_bytes

    upload = upload_bytes(max_upload_mb)
    check_settings(token, upload, max_k, max_batch)
    check_address(host, port)  # a bad port or one in use: refused before the index and the model load
    app = create_app(index, run, token, upload, max_k, max_batch)
    check_address(host, port)  # and again just before uvicorn binds it
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        console.print(f"[yellow]warning:[/] serving on {host} without a token: anyone who can reach it can search")
    console.print(f"serving {index} on http://{host}:{port}/ (API docs: /docs, schema: /openapi.json)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
