-- Every account added, changed or removed (qmp accounts add | remove): who, why, the account before and after.
-- The accounts in force are in the qmp_accounts bucket; this is their history.
CREATE TABLE IF NOT EXISTS account_audit (
    id bigserial,
    ts timestamptz NOT NULL DEFAULT now(),
    account text NOT NULL,
    command_id text NOT NULL,
    sender text NOT NULL,
    reason text NOT NULL DEFAULT '',
    before jsonb,
    after jsonb,
    PRIMARY KEY (account, command_id)
);
