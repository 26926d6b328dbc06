-- What the dashboard sets side by side:
-- * each fill's slippage as the cost model predicted it (no noise) next to the one realized against arrival;
--   NULL where no model priced it (rows written before, positions adopted from a venue);
-- * each risk snapshot's backtest observation: the hypothetical return of the previous snapshot's positions
--   since then (what that snapshot's VaR forecast), so an exception (a loss beyond the VaR before it) can be
--   marked on the day it happened; NULL when the day was not an observation.
ALTER TABLE fills ADD COLUMN IF NOT EXISTS model_slippage_bps double precision;
ALTER TABLE risk_snapshots ADD COLUMN IF NOT EXISTS realized_return double precision;

DROP FUNCTION IF EXISTS execution_write_batch(
    timestamptz[], text[], text[], text[], text[], text[], float8[], float8[], float8[], float8[], float8[],
    float8[], float8[], float8[], float8[], text[],
    timestamptz[], text[], float8[], float8[], float8[], float8[], float8[], float8[], float8[], integer[], integer[],
    timestamptz[], text[], text[], float8[], float8[], float8[], float8[]);

-- As 0009's, with each fill's model slippage.
CREATE OR REPLACE FUNCTION execution_write_batch(
    f_ts timestamptz[], f_strategy text[], f_fill_id text[], f_order_id text[], f_symbol text[], f_side text[],
    f_quantity float8[], f_price float8[], f_arrival_price float8[], f_slippage_bps float8[], f_fee float8[],
    f_participation float8[], f_daily_vol float8[], f_adv float8[], f_remaining float8[], f_deployment_id text[],
    f_model_slippage_bps float8[],
    e_ts timestamptz[], e_strategy text[], e_cash float8[], e_equity float8[], e_realized_pnl float8[],
    e_unrealized_pnl float8[], e_fees float8[], e_gross_exposure float8[], e_net_exposure float8[],
    e_positions integer[], e_working integer[],
    p_ts timestamptz[], p_strategy text[], p_symbol text[], p_quantity float8[], p_price float8[],
    p_avg_price float8[], p_unrealized_pnl float8[]
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO fills (ts, strategy, fill_id, order_id, symbol, side, quantity, price, arrival_price,
                       slippage_bps, fee, participation, daily_vol, adv, remaining, deployment_id, model_slippage_bps)
    SELECT * FROM unnest(f_ts, f_strategy, f_fill_id, f_order_id, f_symbol, f_side, f_quantity, f_price,
                         f_arrival_price, f_slippage_bps, f_fee, f_participation, f_daily_vol, f_adv, f_remaining,
                         f_deployment_id, f_model_slippage_bps)
    ON CONFLICT DO NOTHING;
    INSERT INTO equity_curve (ts, strategy, cash, equity, realized_pnl, unrealized_pnl, fees, gross_exposure,
                              net_exposure, positions, working)
    SELECT * FROM unnest(e_ts, e_strategy, e_cash, e_equity, e_realized_pnl, e_unrealized_pnl, e_fees,
                         e_gross_exposure, e_net_exposure, e_positions, e_working)
    ON CONFLICT DO NOTHING;
    INSERT INTO positions (ts, strategy, symbol, quantity, price, avg_price, unrealized_pnl)
    SELECT * FROM unnest(p_ts, p_strategy, p_symbol, p_quantity, p_price, p_avg_price, p_unrealized_pnl)
    ON CONFLICT DO NOTHING;
$$;
