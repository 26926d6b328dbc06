-- The rollout each fill's order was sent under (its rollout_id), so a fill is tied to its deployment and
-- phase. Rows written before, and fills of strategies with no rollout, keep ''.
ALTER TABLE fills ADD COLUMN IF NOT EXISTS deployment_id text NOT NULL DEFAULT '';
