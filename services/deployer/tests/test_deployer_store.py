"""The deployer's mirror of the control bucket reads a corrupt value the way execution does: HALTED."""

from qmp_core.messages import TradingState, encode
from qmp_deployer.handlers import ControlStore


def test_apply_when_value_corrupt_then_halted_not_the_previous_entry_and_reported_for_a_dead_letter() -> None:
    reported: list[tuple[str, bytes, str]] = []
    store = ControlStore(kv=None, on_invalid=lambda *letter: reported.append(letter))  # type: ignore[arg-type]
    store.apply("alpha.risk", encode(TradingState(strategy="alpha", size_multiplier=0.5)), "PUT", 1)

    store.apply("alpha.risk", b"\x00garbage", "PUT", 2)

    state = store.entries.effective("alpha")
    assert state.status == "HALTED" and "alpha.risk" in state.reason
    assert [(key, value) for key, value, _ in reported] == [("alpha.risk", b"\x00garbage")]
    assert store.revisions["alpha.risk"] == 2  # a resume can overwrite it with compare-and-set


def test_apply_when_older_revision_then_ignored() -> None:
    store = ControlStore(kv=None)  # type: ignore[arg-type]
    store.apply("alpha.operator", encode(TradingState(strategy="alpha", status="HALTED", reason="x")), "PUT", 5)

    store.apply("alpha.operator", encode(TradingState(strategy="alpha")), "PUT", 4)

    assert store.entries.effective("alpha").status == "HALTED"


async def test_write_control_audit_when_a_reason_holds_a_nul_then_stored_not_refused(
        database_url: str, unique_id: str) -> None:
    import msgspec

    from qmp_core.db import connect_pool
    from qmp_core.messages import ControlApplied, ControlCommand
    from qmp_deployer.store import write_control_audit

    command = msgspec.convert({"command": "halt", "reason": "a\x00b", "command_id": unique_id}, ControlCommand)
    state = TradingState(strategy=unique_id, status="HALTED", reason="a\x00b")
    pool = await connect_pool(database_url)
    try:
        # PostgreSQL holds no NUL: before, this raised and every later deployer start failed on it.
        await write_control_audit(pool, [ControlApplied(strategy=unique_id, command=command, state=state,
                                                        ts_event=1, sender="operator")])
        row = await pool.fetchrow("SELECT command, state FROM control_audit WHERE strategy = $1", unique_id)
    finally:
        await pool.close()
    assert row is not None and "a\ufffdb" in row["command"] and "a\ufffdb" in row["state"]
