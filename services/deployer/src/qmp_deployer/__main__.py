"""`python -m qmp_deployer` runs the deployer with settings from `QMP_*` environment variables."""

import sys

from qmp_core.config import settings_main
from qmp_core.service import run_service
from qmp_deployer.app import create_app
from qmp_deployer.config import DeployerSettings


def main() -> None:
    if settings_main(DeployerSettings, sys.argv[1:]):  # `--settings`: describe them, run nothing
        return
    run_service(create_app().run())


if __name__ == "__main__":
    main()
