import os

pytest_plugins = ["qmp_ops.testing"]

# `qmp verify` and `qmp sweep` spread their pieces over every core with Ray by default (seconds to start); the
# suite's runs of them stay in one process, and the tests of Ray ask for workers themselves.
os.environ.setdefault("QMP_RESEARCH_WORKERS", "1")
