"""The collector's engine: chunking and validation, pure; the sources live in `qmp_collector.sources`."""

from qmp_collector.engine.chunking import chunk
from qmp_collector.engine.collector import CollectorEngine, InputBounds, Outcome, ResumePoint

__all__ = ["CollectorEngine", "InputBounds", "Outcome", "ResumePoint", "chunk"]
