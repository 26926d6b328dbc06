"""Every command the README and docs/ promise exists: each `./dev <verb> [<subverb>]` and `qmp <verb> [<subverb>]`
they name is a command of the CLI (a doc that promises a command that does not exist is a bug)."""

import re
from pathlib import Path

import typer

from qmp_ops.cli.main import app, register_extensions

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `./dev` or `qmp`, its global flags (each with a value or not), the verb, and a word after it (a subverb when the
# verb is a group); a verb is a whole word (not the start of `ca.pem`).
NAMED = re.compile(r"(?:\./dev|(?<![\w/.-])qmp)\s+((?:--?[\w-]+(?:[ =]\S+)?\s+)*)"
                   r"([a-z][a-z-]*)(?![\w.:/=])(?:\s+([a-z][a-z-]*)(?![\w.:/=]))?")
NOT_VERBS = {"demo", "test"}  # `./dev demo` and `./dev test` are the dev script's own (demo is a verb too)


def named_commands(text: str) -> set[tuple[str, str | None]]:
    found = set()
    for match in NAMED.finditer(text):
        found.add((match.group(2), match.group(3)))
    return found


def test_docs_when_they_name_a_command_then_the_cli_has_it() -> None:
    register_extensions()
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    missing = []
    for doc in DOCS:
        for verb, sub in named_commands(doc.read_text()):
            if verb in NOT_VERBS and verb not in root.commands:
                continue
            command = root.commands.get(verb)
            if command is None:
                missing.append(f"{doc.name}: {verb}")
            elif hasattr(command, "commands") and sub is not None and sub not in command.commands:
                missing.append(f"{doc.name}: {verb} {sub}")
    assert missing == []


def test_named_commands_when_flags_come_first_then_the_verb_is_found() -> None:
    text = "`qmp --nats-url tls://h:4222 status`, ./dev portfolio apply x, qmp rollout promote s"
    assert named_commands(text) >= {("status", None), ("portfolio", "apply"), ("rollout", "promote")}
    assert ("frobnicate", None) in named_commands("then `./dev frobnicate`")  # what the check above would refuse
