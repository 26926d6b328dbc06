"""`python -m qmp_deployer` runs the deployer with settings from `QMP_*` environment variables."""

import asyncio

from qmp_deployer.app import create_app


def main() -> None:
    asyncio.run(create_app().run())


if __name__ == "__main__":
    main()
