"""`--watch`: a screen refreshed every second until Ctrl-C, for `qmp status` and `qmp rollout status`."""

import contextlib
import time
from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.live import Live

REFRESH_S = 1.0


def watch(console: Console, render: Callable[[], RenderableType]) -> None:
    """Show `render()` every second: in place on a terminal, one screen after another into a pipe or a log.

    Ctrl-C ends the watch (the last screen stays), not the program with a traceback.
    """
    with contextlib.suppress(KeyboardInterrupt):
        if not console.is_terminal:  # rich's Live shows nothing at all when the output is not a terminal
            while True:
                console.print(render())
                time.sleep(REFRESH_S)
        with Live(render(), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(REFRESH_S)
                live.update(render())
