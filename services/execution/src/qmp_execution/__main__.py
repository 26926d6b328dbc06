"""`python -m qmp_execution`: run the execution service until SIGINT/SIGTERM."""

import sys

from qmp_core.config import load_settings, run_dir, settings_main
from qmp_core.service import run_service
from qmp_core.telemetry import setup_logging, setup_tracing
from qmp_execution.app import ExecutionService, ExecutionSettings
from qmp_execution.handlers import SERVICE


def main() -> None:
    """Read settings from the environment, then run the service; bad settings fail before connecting."""
    if settings_main(ExecutionSettings, sys.argv[1:]):  # `--settings`: describe them, run nothing
        return
    if "--warm-kernels" in sys.argv[1:]:  # an image's build: compile the slippage kernels into the Numba cache
        from qmp_execution.engine.slippage import SlippageConfig, SlippageModel

        for model in ("almgren", "sqrt"):
            SlippageModel(SlippageConfig(model=model)).cost(1_000.0, 0.02, 1e6)
        return
    settings = load_settings(ExecutionSettings)
    setup_logging(SERVICE, settings.log_level)
    provider = setup_tracing(SERVICE, run_dir(settings), settings.otlp_endpoint, settings.tracing,
                             settings.otlp_protocol)
    service = ExecutionService(settings)
    try:
        run_service(service.app.run())
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
