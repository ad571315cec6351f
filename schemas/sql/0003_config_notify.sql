-- Change notifications for `meterstream sync-config` (LISTEN meterstream_config).
-- The payload names the row that changed; the listener re-reads its current state, so the
-- order and the number of notifications do not matter, and its periodic reconciliation
-- heals a notification that was missed.
CREATE FUNCTION meterstream_notify_config() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed RECORD;
BEGIN
    changed := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    IF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('meterstream_config', json_build_object(
            'table', TG_TABLE_NAME, 'api_key_fp', changed.api_key_fp)::text);
        IF TG_OP = 'UPDATE' AND OLD.api_key_fp <> NEW.api_key_fp THEN
            PERFORM pg_notify('meterstream_config', json_build_object(
                'table', TG_TABLE_NAME, 'api_key_fp', OLD.api_key_fp)::text);
        END IF;
    ELSIF TG_TABLE_NAME = 'service_instances' THEN
        PERFORM pg_notify('meterstream_config', json_build_object(
            'table', TG_TABLE_NAME, 'customer_id', changed.customer_id,
            'service_type', changed.service_type)::text);
    ELSE
        PERFORM pg_notify('meterstream_config', json_build_object(
            'table', TG_TABLE_NAME, 'customer_id', changed.customer_id)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER customers_notify_config AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION meterstream_notify_config();
CREATE TRIGGER service_instances_notify_config AFTER INSERT OR UPDATE OR DELETE ON service_instances
    FOR EACH ROW EXECUTE FUNCTION meterstream_notify_config();
CREATE TRIGGER api_keys_notify_config AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION meterstream_notify_config();
