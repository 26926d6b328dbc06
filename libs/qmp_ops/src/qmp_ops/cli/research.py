"""Where the research commands (`qmp verify`, `sweep`, `stress --monte-carlo`, `portfolio test`) run their
independent pieces: the options they share, and the default (every core when Ray is installed)."""

import importlib.util
import os

from qmp_lab.parallel import Workers

WORKERS_HELP = ("processes for the independent pieces, as Ray tasks when more than 1 (default: every core when "
                "Ray is installed, qmp-lab[ray]; else this process)")
RAY_ADDRESS_HELP = "an existing Ray cluster to run them on (`auto`, `ray://host:10001`)"


def research_workers(workers: int | None, ray_address: str, pythonpath: str = "") -> Workers:
    """Where research pieces run: the cluster named, the count asked, else every core when Ray is installed."""
    if workers is None:
        workers = (os.cpu_count() or 1) if importlib.util.find_spec("ray") is not None else 1
    return Workers(count=workers, address=ray_address, pythonpath=pythonpath)
