"""Pre-trade limits: kept in one form, so that only a real change counts as one."""

from qmp_core.limits import LIMIT_NAMES, changed_limits, normalized
from qmp_core.messages import PreTradeLimits


def test_changed_limits_when_symbols_differ_only_in_order_or_repeats_then_no_change() -> None:
    before = PreTradeLimits(restricted_symbols=["GME", "AMC"], max_order_rate=5)

    assert changed_limits(before, PreTradeLimits(restricted_symbols=["AMC", "GME", "AMC"], max_order_rate=5)) == ()
    assert changed_limits(before, PreTradeLimits(restricted_symbols=["AMC"])) == ("restricted_symbols",
                                                                                 "max_order_rate")
    assert normalized(PreTradeLimits(restricted_symbols=["b", "a", "b"])).restricted_symbols == ["a", "b"]
    assert set(LIMIT_NAMES) == set(PreTradeLimits.__struct_fields__)
