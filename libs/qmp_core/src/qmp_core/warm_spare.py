"""`python -m qmp_core.warm_spare qmp_risk`: a service imported ahead of need, run on its supervisor's word.

A crashed service's restart spends most of its seconds importing (numba, scipy, pandas, FastStream), not
recovering. A supervisor keeps one spare per service: a process that has imported the service's
`__main__` module and waits on its standard input. When the service dies, the supervisor writes `go`
and the spare runs the service's `main()` at once; end of input (the supervisor stopped, or replaced the
spare) ends it without running anything. Settings are read only after `go`, as a fresh start reads them.
"""

import importlib
import sys

GO = b"go\n"


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].startswith("qmp_"):
        raise SystemExit("usage: python -m qmp_core.warm_spare qmp_<service>")
    service = importlib.import_module(f"{sys.argv[1]}.__main__")
    if sys.stdin.buffer.readline() != GO:
        return
    service.main()


if __name__ == "__main__":
    main()
