"""`qmp credentials`: the deployment's secrets in its `.env` file, made here, never typed or defaulted.

The file is the compose stack's (`docker-compose.yml` reads every secret as `${NAME:?...}`): made from
`.env.example` when missing, its lines kept as they are. Every secret left empty (a name ending in PASSWORD or
SECRET) gets a new random one: a letter, then 32 URL-safe random characters (nats-server reads
`$QMP_<ROLE>_PASSWORD` as a config value, so a value that looked like a number, a size or a flag would not load).
A value already there is never changed. The file is written readable by its owner only.

`audit_env_file` is the check `qmp audit security` runs on it: owner-only, and no secret empty, short, a known
default, or shared by two identities.
"""

import re
import secrets
import stat
import string
from pathlib import Path

from qmp_ops.runtime.ports import write_private
from qmp_ops.security import Finding

SECRET_NAME = re.compile(r"^([A-Z][A-Z0-9_]*(?:PASSWORD|SECRET))=(.*)$")
MIN_LENGTH = 24
KNOWN_DEFAULTS = ("password", "changeme", "secret", "admin", "qmp", "postgres", "guest")


def new_secret() -> str:
    return secrets.choice(string.ascii_letters) + secrets.token_urlsafe(24)


def fill_credentials(env_file: Path, template: Path | None = None) -> list[str]:
    """Give every empty secret of `env_file` (made from `template` when missing) a new one; return their names.
    Raises FileNotFoundError when neither file exists."""
    if env_file.exists():
        lines = env_file.read_text().splitlines()
    elif template is not None and template.exists():
        lines = template.read_text().splitlines()
    else:
        raise FileNotFoundError(f"neither {env_file} nor a template ({template or '.env.example'}) exists")
    filled = []
    for i, line in enumerate(lines):
        found = SECRET_NAME.match(line.strip())
        if found and not found.group(2).strip():
            lines[i] = f"{found.group(1)}={new_secret()}"
            filled.append(found.group(1))
    write_private(env_file, "\n".join(lines) + "\n")
    env_file.chmod(0o600)  # an existing file keeps its mode through os.open: set it
    return filled


def secrets_of(env_file: Path) -> dict[str, str]:
    """The file's secrets: name → value (empty included)."""
    found = (SECRET_NAME.match(line.strip()) for line in env_file.read_text().splitlines())
    return {m.group(1): m.group(2).strip().strip("'\"") for m in found if m}


def audit_env_file(env_file: Path) -> list[Finding]:
    """A finding for each way the file's secrets fall short."""
    findings = []
    mode = env_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        findings.append(Finding("files.private", f"{env_file} is readable by others (mode {stat.filemode(mode)}): "
                                          f"chmod 600 {env_file}"))
    values = secrets_of(env_file)
    for name, value in values.items():
        if not value:
            findings.append(Finding("credentials.empty", f"{name} is empty in {env_file}: `qmp credentials` makes one"))
        elif value.lower() in KNOWN_DEFAULTS or len(value) < MIN_LENGTH:
            findings.append(Finding("credentials.weak", f"{name} in {env_file} is a known default or shorter than "
                                                 f"{MIN_LENGTH} characters"))
        elif not value[0].isalpha():
            findings.append(Finding("credentials.format", f"{name} in {env_file} must start with a letter"))
    shared = {value for value in values.values() if value and list(values.values()).count(value) > 1}
    for value in shared:
        names = sorted(name for name, v in values.items() if v == value)
        findings.append(Finding("credentials.shared", f"{', '.join(names)} share one password in {env_file}"))
    return findings
