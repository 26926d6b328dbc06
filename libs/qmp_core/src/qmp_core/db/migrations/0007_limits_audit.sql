-- Every change of a strategy's pre-trade limits (qmp limits apply): who, why, the limits before and after, and
-- which changed. The limits in force are in the qmp_limits bucket; this is their history.
CREATE TABLE IF NOT EXISTS limits_audit (
    id bigserial,
    ts timestamptz NOT NULL DEFAULT now(),
    strategy text NOT NULL,
    command_id text NOT NULL,
    sender text NOT NULL,
    reason text NOT NULL DEFAULT '',
    changed text[] NOT NULL,
    before jsonb NOT NULL,
    after jsonb NOT NULL,
    PRIMARY KEY (strategy, command_id)
);
