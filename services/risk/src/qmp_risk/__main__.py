"""`python -m qmp_risk`: run the risk service with settings from `QMP_*` environment variables."""

import sys

from qmp_core.config import load_settings, run_dir, settings_main
from qmp_core.service import run_service
from qmp_core.telemetry import setup_logging, setup_tracing
from qmp_risk.app import create_app
from qmp_risk.config import RiskSettings
from qmp_risk.handlers import SERVICE


def main() -> None:
    if settings_main(RiskSettings, sys.argv[1:]):  # `--settings`: describe them, run nothing
        return
    if "--warm-kernels" in sys.argv[1:]:  # an image's build: compile every kernel into the Numba cache, or fail
        from qmp_core.clock import make_clock
        from qmp_risk.engine import RiskEngine

        settings = RiskSettings()
        RiskEngine(settings, make_clock(settings.clock)).warm_up()
        return
    settings = load_settings(RiskSettings)
    setup_logging(SERVICE, settings.log_level)
    provider = setup_tracing(SERVICE, run_dir(settings), settings.otlp_endpoint, settings.tracing,
                             settings.otlp_protocol)
    try:
        run_service(create_app(settings).run())
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
