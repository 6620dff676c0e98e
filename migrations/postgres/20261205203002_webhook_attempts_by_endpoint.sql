-- An endpoint's latest attempts, newest first (the console's keys page).
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
