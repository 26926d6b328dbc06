-- Risk: what a snapshot adds beyond VaR / ES (status, backtests, positions, errors) and why a breaker moved.
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'ok';
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS observations integer NOT NULL DEFAULT 0;
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS drawdown double precision NOT NULL DEFAULT 0;
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS positions jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS backtests jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS errors jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE breaker_events ADD COLUMN IF NOT EXISTS detail text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS breaker_events_ts ON breaker_events (ts DESC);
