import pytest

from qmp_core.dedup import RecentIds


def test_recent_ids_when_id_repeats_then_only_first_counts() -> None:
    seen: RecentIds[str] = RecentIds(10)
    assert [seen.first_time(key) for key in ("a", "b", "a", "b", "c")] == [True, True, False, False, True]
    assert len(seen) == 3


def test_recent_ids_when_capacity_exceeded_then_oldest_forgotten_and_memory_bounded() -> None:
    seen: RecentIds[int] = RecentIds(3)
    for key in range(5):
        assert seen.first_time(key)
    assert len(seen) == 3
    assert seen.first_time(0)  # forgotten: the window holds 2, 3, 4
    assert not seen.first_time(4)


def test_recent_ids_when_capacity_not_positive_then_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentIds(0)
