"""`python -m qmp_collector` runs the collector with settings from `QMP_*` environment variables."""

import asyncio

from qmp_collector.app import create_app


def main() -> None:
    asyncio.run(create_app().run())


if __name__ == "__main__":
    main()
