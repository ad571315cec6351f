-- TimescaleDB when the server offers it (docs/schema.md); plain Postgres tables otherwise.
-- A hypertable's unique constraints must include the time column: request_id stays unique
-- through (request_id, ts), since a request_id always comes with the same ts.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        ALTER TABLE haproxy_raw_logs DROP CONSTRAINT haproxy_raw_logs_request_id_unique;
        ALTER TABLE haproxy_raw_logs
            ADD CONSTRAINT haproxy_raw_logs_request_id_unique UNIQUE (request_id, ts);
        PERFORM create_hypertable('haproxy_raw_logs', 'ts', chunk_time_interval => INTERVAL '1 day');
        PERFORM add_retention_policy('haproxy_raw_logs', INTERVAL '90 days');
        PERFORM create_hypertable('usage_minutes', 'window_start', chunk_time_interval => INTERVAL '7 days');
        PERFORM add_retention_policy('usage_minutes', INTERVAL '35 days');
    ELSE
        RAISE NOTICE 'timescaledb is not available: plain tables';
    END IF;
END
$$;
