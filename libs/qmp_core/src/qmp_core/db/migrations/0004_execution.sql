-- Execution: what each fill cost and why (slippage calibration), books after every batch (equity curve,
-- positions), and slippage calibrations. Written with COPY; unique keys make a re-written batch a no-op.
ALTER TABLE fills ADD COLUMN IF NOT EXISTS participation double precision;
ALTER TABLE fills ADD COLUMN IF NOT EXISTS daily_vol double precision;
ALTER TABLE fills ADD COLUMN IF NOT EXISTS adv double precision;
ALTER TABLE fills ADD COLUMN IF NOT EXISTS remaining double precision;

CREATE TABLE IF NOT EXISTS equity_curve (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    cash double precision NOT NULL,
    equity double precision NOT NULL,
    realized_pnl double precision NOT NULL,
    unrealized_pnl double precision NOT NULL,
    fees double precision NOT NULL,
    gross_exposure double precision NOT NULL,
    net_exposure double precision NOT NULL,
    positions integer NOT NULL,
    working integer NOT NULL,
    PRIMARY KEY (strategy, ts)
);
CREATE INDEX IF NOT EXISTS equity_curve_ts_brin ON equity_curve USING brin (ts);

CREATE TABLE IF NOT EXISTS positions (
    ts timestamptz NOT NULL,
    strategy text NOT NULL,
    symbol text NOT NULL,
    quantity double precision NOT NULL,
    price double precision NOT NULL,
    avg_price double precision NOT NULL,
    unrealized_pnl double precision NOT NULL,
    PRIMARY KEY (strategy, symbol, ts)
);
CREATE INDEX IF NOT EXISTS positions_ts_brin ON positions USING brin (ts);

CREATE TABLE IF NOT EXISTS slippage_calibrations (
    id bigserial PRIMARY KEY,
    ts timestamptz NOT NULL DEFAULT now(),
    strategy text NOT NULL,
    model text NOT NULL,
    half_spread_bps double precision NOT NULL,
    eta double precision NOT NULL,
    beta double precision NOT NULL,
    r2 double precision,
    records integer NOT NULL,
    params jsonb NOT NULL
);
-- timescale:
SELECT create_hypertable('equity_curve', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('positions', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
