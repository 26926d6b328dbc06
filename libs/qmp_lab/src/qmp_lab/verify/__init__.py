"""`qmp verify`: the verification suite that proves a strategy and the system are safe to deploy.

Tests (one module each): `walk_forward` (zero look-ahead, purged walk-forward, DSR, PBO), `fat_tail`
(VaR/ES by every risk method, rolling backtests), `black_swan` (crisis replays through the real stack,
breakers on and off), `slippage` (impact model scaling and accuracy against a known process), `numba`
(kernel speed against numpy and pandas). `runner.run_verification` runs them and writes the report;
`gate.check_deployable` is the deployment gate (the operator side's `qmp_ops.emergency` halts and locks
a running strategy whose verification failed).
"""
