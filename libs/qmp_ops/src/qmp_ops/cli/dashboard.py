"""`qmp dashboard`: the live overview of the running stack, with its controls, in a browser.

    qmp dashboard [--host 127.0.0.1] [--port 8501]
"""

from typing import Annotated

import typer
from rich.console import Console

from qmp_ops.runtime.supervisor import Connection

console = Console()
DEFAULT_PORT = 8501  # the seed's dashboard port


def dashboard(
    host: Annotated[str, typer.Option(help="the address to serve on (loopback: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to serve on")] = DEFAULT_PORT,
) -> None:
    """Serve the dashboard of the running stack: every strategy's trading state, phase, allocation, equity,
    drawdown, VaR / ES and breakers, live, with halt, resume, allocation, order size and kill behind a sign-in
    with an operator's NATS credentials (each request sent under them, as `qmp` would). Ctrl-C stops it."""
    from aiohttp import web

    from qmp_ops.dashboard import create_app

    stack = Connection.read()
    console.print(f"dashboard of the stack at {stack.nats_url}: http://{host}:{port}/ — sign in with an operator's "
                  "NATS user and password (.qmp/connection.json holds the admin's; `qmp up --operators` makes one "
                  "per person); Ctrl-C stops it", soft_wrap=True)
    web.run_app(create_app(stack), host=host, port=port, print=None)
