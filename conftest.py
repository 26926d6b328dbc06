pytest_plugins = ["qmp_core.testing"]
