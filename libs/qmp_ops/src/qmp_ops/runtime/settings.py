"""The services' settings as each service states them (`python -m qmp_<service> --settings`), and the
operator's `qmp up --set NAME=VALUE` checked against them before anything starts.

The CLI keeps no list of settings: each service describes its own settings class, so a setting added to a
service can be set through `qmp up` (and is shown by `qmp settings`) with nothing else to change.
"""

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from difflib import get_close_matches

import msgspec

from qmp_core.config import PREFIX, SettingsReport
from qmp_ops.runtime.supervisor import SERVICES, STACK_OWNED  # set by the stack: a --set of one is refused


class SettingsError(ValueError):
    """A `--set` the services cannot take: unknown, owned by the stack, or refused by a service."""


def read_reports(environ: Mapping[str, str] | None = None,
                 services: Sequence[str] = SERVICES) -> dict[str, SettingsReport]:
    """Ask every service to describe its settings under `environ` (all at once: each imports its code)."""
    env = dict(os.environ if environ is None else environ)

    def one(service: str) -> SettingsReport:
        done = subprocess.run([sys.executable, "-m", f"qmp_{service}", "--settings"], env=env,
                              capture_output=True, timeout=120, check=False)
        try:
            return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=SettingsReport)
        except (IndexError, msgspec.DecodeError):
            tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:]
            raise SettingsError(f"{service} could not describe its settings: {' '.join(tail) or 'no output'}"
                                ) from None

    with ThreadPoolExecutor(len(services)) as pool:
        return dict(zip(services, pool.map(one, services), strict=True))


def setting_name(text: str) -> str:
    """`initial_capital`, `initial-capital`, `INITIAL_CAPITAL` and `QMP_INITIAL_CAPITAL` name one setting."""
    name = text.strip().replace("-", "_").lower()
    return name.removeprefix(PREFIX.lower())


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    """Read `NAME=VALUE` pairs into setting name → value (the last one wins)."""
    sets: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SettingsError(f"--set takes NAME=VALUE, got {pair!r}")
        sets[setting_name(name)] = value
    return sets


def service_sets(sets: Mapping[str, str], reports: Mapping[str, SettingsReport],
                 flags: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Return service → {QMP_<NAME>: value} for the services that read each setting; raise SettingsError
    for a name no service reads (with the closest names), one the stack owns, one a flag of `qmp up` sets
    (`flags`: name → the flag), or a value a service refused (`reports` read with the values applied)."""
    known = {info.name: service for service, report in reports.items() for info in report.settings}
    problems = []
    for name in sets:
        if name in STACK_OWNED:
            problems.append(f"{name} is set by the stack itself (its own connection, identity and run directory)")
        elif flags and name in flags:
            problems.append(f"{name} has its own flag: use {flags[name]}")
        elif name not in known:
            close = get_close_matches(name, list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (`qmp settings` lists them)"
            problems.append(f"no service reads a setting {name!r}{hint}")
    problems += [f"{service}: {report.error}" for service, report in reports.items() if report.error]
    if problems:
        raise SettingsError("; ".join(problems))
    out: dict[str, dict[str, str]] = {}
    for service, report in reports.items():
        mine = {info.name for info in report.settings}
        out[service] = {PREFIX + name.upper(): value for name, value in sets.items() if name in mine}
    return out
