"""`python -m qmp_collector` runs the collector with settings from `QMP_*` environment variables."""

import sys

from qmp_collector.app import CollectorSettings, create_app
from qmp_core.config import settings_main
from qmp_core.service import run_service


def main() -> None:
    if settings_main(CollectorSettings, sys.argv[1:]):  # `--settings`: describe them, run nothing
        return
    run_service(create_app().run())


if __name__ == "__main__":
    main()
