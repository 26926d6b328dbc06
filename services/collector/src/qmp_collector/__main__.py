"""`python -m qmp_collector` runs the collector with settings from `QMP_*` environment variables."""

import asyncio
import sys

from qmp_collector.app import CollectorSettings, create_app
from qmp_core.config import settings_main


def main() -> None:
    if settings_main(CollectorSettings, sys.argv[1:]):  # `--settings`: describe them, run nothing
        return
    asyncio.run(create_app().run())


if __name__ == "__main__":
    main()
