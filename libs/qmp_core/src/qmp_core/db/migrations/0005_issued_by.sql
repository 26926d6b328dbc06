-- One name per idea: who caused a deployment event is `issued_by`, as on control commands and trading state
-- (the DeploymentEvent message still carries `actor`, its first name, for readers that know only that one).
ALTER TABLE deployment_events RENAME COLUMN actor TO issued_by;
