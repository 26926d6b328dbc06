-- The deployer's audit trail: every rollout transition, gate alert and action, in event time.
-- (strategy, rollout_id, seq) is unique, so an event carried out twice after a crash is stored once.
CREATE TABLE IF NOT EXISTS deployment_events (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    rollout_id text NOT NULL,
    seq integer NOT NULL,
    kind text NOT NULL,
    phase_from text NOT NULL,
    phase_to text NOT NULL,
    status text NOT NULL,
    trigger text NOT NULL,
    actor text NOT NULL,
    command_id text NOT NULL,
    allocation_before double precision NOT NULL,
    allocation_after double precision NOT NULL,
    metrics jsonb NOT NULL,
    thresholds jsonb NOT NULL,
    reason text NOT NULL,
    epoch bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strategy, rollout_id, seq)
);
CREATE INDEX IF NOT EXISTS deployment_events_strategy_ts ON deployment_events (strategy, ts DESC, seq DESC);
-- Operator command ids, for "a repeated command is applied once" beyond the ids kept in the rollout state.
CREATE INDEX IF NOT EXISTS deployment_events_command ON deployment_events (strategy, command_id)
    WHERE command_id <> '';
