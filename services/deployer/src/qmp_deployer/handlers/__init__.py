"""Decode → engine → KV (compare-and-set) → publish, audit, reply. No decisions here.

`control`: control requests and the control bucket. `rollout`: deploy commands, gate evaluations, the
lease, the rollouts bucket and the audit trail. `probes`: API latency and memory readings.
"""

from qmp_deployer.handlers.control import SERVICE, ControlHandler, ControlStore

__all__ = ["SERVICE", "ControlHandler", "ControlStore"]
