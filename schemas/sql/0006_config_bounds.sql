-- Configuration rows within what the wire models hold (docs/schema.md, "Bounds of the
-- configuration tables"). A row the readers cannot turn into their model (sync-config's
-- InstanceState and CustomerState, the vault's ServiceEntry and SealKeyEntry) is refused here.
--
-- Rows already there that break a new CHECK are kept as they are: each constraint is added
-- NOT VALID (new and updated rows are checked at once), then validated only when no row
-- breaks it. Where one does, the migration warns and the constraint stays NOT VALID; the
-- readers report and skip such rows until an operator fixes them and validates the
-- constraint (the queries are in docs/schema.md).

-- service_instances.config overrides: absent, or a whole number 0 .. 2^31-1 (RPS_MAX of
-- schemas/types.py). jsonb prints a number in plain digits (1e3 is 1000), so a digit string of
-- at most 10 characters is a whole non-negative number that a bigint holds. CASE keeps the cast
-- behind the tests (the operands of AND may run in any order).
CREATE FUNCTION meterstream_rps_ok(config JSONB, name TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN NOT config ? name THEN true
        WHEN jsonb_typeof(config -> name) <> 'number' THEN false
        WHEN (config ->> name) !~ '^[0-9]{1,10}$' THEN false
        ELSE (config ->> name)::BIGINT <= 2147483647
    END
$$;

ALTER TABLE service_instances DROP CONSTRAINT service_instances_rps_are_counts;
ALTER TABLE service_instances ADD CONSTRAINT service_instances_rps_in_range
    CHECK (meterstream_rps_ok(config, 'guaranteed_rps') AND meterstream_rps_ok(config, 'burst_rps')) NOT VALID;

-- money the pipeline holds in int64 micro-dollars: at most (2^63-1) / 10,000 cents
-- (CENTS_MAX of schemas/money.py)
ALTER TABLE customers ADD CONSTRAINT customers_money_in_range
    CHECK (balance_cents <= 922337203685477 AND committed_charges_cents <= 922337203685477) NOT VALID;

-- a seal key entry of the vault has an id (SealKeyEntry.id)
ALTER TABLE seal_keys ADD CONSTRAINT seal_keys_id_not_empty CHECK (seal_key_id <> '') NOT VALID;

DO $$
DECLARE
    target TEXT[];
BEGIN
    FOREACH target SLICE 1 IN ARRAY ARRAY[
        ['service_instances', 'service_instances_rps_in_range'],
        ['customers', 'customers_money_in_range'],
        ['seal_keys', 'seal_keys_id_not_empty']]
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', target[1], target[2]);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING 'meterstream: rows of % break %; they are kept, the constraint stays NOT VALID '
                          'and sync-config and the vault skip those rows until they are fixed (docs/schema.md)',
                          target[1], target[2];
        END;
    END LOOP;
END
$$;
