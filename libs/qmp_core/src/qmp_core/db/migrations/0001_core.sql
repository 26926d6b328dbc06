-- Bars, fills, risk snapshots, control audit and dead letters. Time first; unique keys make writes idempotent.
CREATE TABLE IF NOT EXISTS bars (
    ts timestamptz NOT NULL,
    venue text NOT NULL,
    symbol text NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision NOT NULL,
    PRIMARY KEY (venue, symbol, ts)
);
CREATE INDEX IF NOT EXISTS bars_ts_brin ON bars USING brin (ts);

CREATE TABLE IF NOT EXISTS fills (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    fill_id text NOT NULL,
    order_id text NOT NULL,
    symbol text NOT NULL,
    side text NOT NULL,
    quantity double precision NOT NULL,
    price double precision NOT NULL,
    arrival_price double precision NOT NULL,
    slippage_bps double precision NOT NULL,
    fee double precision NOT NULL,
    PRIMARY KEY (strategy, fill_id, ts)
);
CREATE INDEX IF NOT EXISTS fills_ts ON fills (ts DESC);

CREATE TABLE IF NOT EXISTS risk_snapshots (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    equity double precision NOT NULL,
    var jsonb NOT NULL,
    es jsonb NOT NULL,
    drawdown_24h double precision NOT NULL,
    drawdown_max double precision NOT NULL,
    volatility_ratio double precision NOT NULL,
    breakers text[] NOT NULL,
    PRIMARY KEY (strategy, ts)
);

CREATE TABLE IF NOT EXISTS control_audit (
    id bigserial,
    ts timestamptz NOT NULL DEFAULT now(),
    strategy text NOT NULL,
    command_id text NOT NULL,
    command jsonb NOT NULL,
    state jsonb NOT NULL,
    PRIMARY KEY (strategy, command_id)
);

CREATE TABLE IF NOT EXISTS breaker_events (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    breaker text NOT NULL,
    event text NOT NULL,
    value double precision NOT NULL,
    threshold double precision NOT NULL,
    action text NOT NULL,
    PRIMARY KEY (strategy, breaker, event, ts)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id bigserial PRIMARY KEY,
    ts timestamptz NOT NULL DEFAULT now(),
    service text NOT NULL,
    subject text NOT NULL,
    reason text NOT NULL,
    payload text NOT NULL
);
-- timescale:
SELECT create_hypertable('bars', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('fills', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('risk_snapshots', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
