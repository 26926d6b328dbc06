pytest_plugins = ["qmp_ops.testing"]
