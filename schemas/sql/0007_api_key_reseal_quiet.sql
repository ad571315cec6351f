-- `meterstream keys rotate-store` re-seals api_keys.api_key_id under a new key-store key
-- (docs/security.md): an UPDATE of that column alone changes nothing sync-config or the vault
-- publish, so it no longer notifies meterstream_config (one notification per row would make
-- them re-read every key of a large table). Any other change notifies as before (0003).
DROP TRIGGER api_keys_notify_config ON api_keys;
CREATE TRIGGER api_keys_notify_config AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION meterstream_notify_config();
CREATE TRIGGER api_keys_notify_config_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'api_key_id') IS DISTINCT FROM (to_jsonb(NEW) - 'api_key_id'))
    EXECUTE FUNCTION meterstream_notify_config();
