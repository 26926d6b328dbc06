"""Operators' pre-trade limits (`PreTradeLimits`): their names, the one form they are kept in, and which of
them differ between two sets. The deployer decides changes with these, execution applies the names, and the
CLI says what a file would change."""

import msgspec

from qmp_core.messages import PreTradeLimits

LIMIT_NAMES = tuple(PreTradeLimits.__struct_fields__)  # each is an execution engine setting of the same name


def normalized(limits: PreTradeLimits) -> PreTradeLimits:
    """The limits as they are kept: restricted symbols sorted, each once (so an equal list is no change)."""
    if limits.restricted_symbols is None:
        return limits
    return msgspec.structs.replace(limits, restricted_symbols=sorted(set(limits.restricted_symbols)))


def changed_limits(before: PreTradeLimits, after: PreTradeLimits) -> tuple[str, ...]:
    """The names of the limits whose value differs (after normalizing both)."""
    before, after = normalized(before), normalized(after)
    return tuple(name for name in LIMIT_NAMES if getattr(before, name) != getattr(after, name))
