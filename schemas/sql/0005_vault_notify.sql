-- Change notifications for `meterstream vault` (LISTEN meterstream_vault): a limit event was
-- recorded, or a seal key or its packages changed. The vault rebuilds from the tables, so the
-- payload is only a hint; customers, service instances and API keys already notify
-- meterstream_config (0003), which the vault listens to as well.
CREATE FUNCTION meterstream_notify_vault() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meterstream_vault', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER limit_events_notify_vault AFTER INSERT ON limit_events
    FOR EACH STATEMENT EXECUTE FUNCTION meterstream_notify_vault();
CREATE TRIGGER seal_keys_notify_vault AFTER INSERT OR UPDATE OR DELETE ON seal_keys
    FOR EACH STATEMENT EXECUTE FUNCTION meterstream_notify_vault();
CREATE TRIGGER seal_key_packages_notify_vault AFTER INSERT OR UPDATE OR DELETE ON seal_key_packages
    FOR EACH STATEMENT EXECUTE FUNCTION meterstream_notify_vault();

-- the latest rate/spend/balance event of each customer is what the vault reads
CREATE INDEX limit_events_latest ON limit_events (customer_id, kind, at DESC);
