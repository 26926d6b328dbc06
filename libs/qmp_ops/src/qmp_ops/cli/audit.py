"""`qmp audit security`: what docs/SECURITY.md promises, checked on a running stack and a deployment's files."""

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_ops.credentials import audit_env_file
from qmp_ops.runtime.roles import ADMIN, ROLES
from qmp_ops.runtime.supervisor import Connection, StackUnavailable
from qmp_ops.security import audit

app = typer.Typer(help="Audits: `qmp audit security`.", no_args_is_help=True)
console = Console()


@app.command()
def security(
    compose: Annotated[Path | None, typer.Option(help="a docker-compose file to check (default: ./docker-compose.yml "
                                                      "when it exists)")] = None,
    nats_config: Annotated[Path | None, typer.Option(help="a production nats-server config to check (default: "
                                                          "./infra/nats/server.conf when it exists)")] = None,
    env_file: Annotated[Path | None, typer.Option(help="the compose stack's secrets file to check (default: ./.env "
                                                       "when it exists)")] = None,
    files_only: Annotated[bool, typer.Option("--files-only", help="check the files, not a running stack")] = False,
) -> None:
    """Probe every service's permissions on the running stack, its TLS, secret files and logs, and the
    compose and NATS config files; exit 1 on any finding, each named."""
    compose = compose or (Path("docker-compose.yml") if Path("docker-compose.yml").exists() else None)
    nats_config = nats_config or (Path("infra/nats/server.conf") if Path("infra/nats/server.conf").exists()
                                  else None)
    connection = None
    if not files_only:
        try:
            connection = Connection.read()
        except StackUnavailable as error:
            console.print(f"[yellow]no running stack checked: {escape(str(error))}[/]")
    passwords = {role: os.environ[f"QMP_{role.upper()}_PASSWORD"] for role in ROLES
                 if role != ADMIN and os.environ.get(f"QMP_{role.upper()}_PASSWORD")}
    checked, findings = asyncio.run(audit(connection, compose, nats_config, passwords))
    env_file = env_file or (Path(".env") if Path(".env").exists() else None)
    if env_file is not None:
        checked.append(str(env_file))
        findings += audit_env_file(env_file)
    for what in checked:
        console.print(f"checked: {escape(what)}")
    if not findings:
        console.print("[green]no finding[/]")
        return
    table = Table(title=f"{len(findings)} findings")
    table.add_column("check")
    table.add_column("finding")
    for finding in findings:
        table.add_row(finding.check, escape(finding.detail))
    console.print(table)
    raise typer.Exit(1)
