-- Who sent each control command, as the bus authenticated it (the NATS user of qmp.control.<sender>.<strategy>);
-- `command.issued_by` is the entry it wrote (operator, risk, deployer). Rows written before keep ''.
ALTER TABLE control_audit ADD COLUMN IF NOT EXISTS sender text NOT NULL DEFAULT '';
