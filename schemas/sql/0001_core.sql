-- meterstream core schema. Settles the design review (docs/schema.md): see docs/schema.md.
-- Money columns are integer cents. Enumerations are SMALLINT codes or TEXT names with a CHECK
-- listing exactly the names of schemas/enums.py.

-- A random positive 32-bit customer id (decision 3); callers retry on the rare collision.
CREATE FUNCTION random_customer_id() RETURNS INTEGER
LANGUAGE sql VOLATILE AS $$ SELECT (1 + floor(random() * 2147483646))::INTEGER $$;

CREATE TABLE customers (
    customer_id             INTEGER PRIMARY KEY DEFAULT random_customer_id()
                            CHECK (customer_id > 0),
    name                    TEXT NOT NULL,
    email                   TEXT,
    -- decision 2: status lives here; the tier does not (it is per service instance)
    status                  VARCHAR(20) NOT NULL DEFAULT 'active'
                            CHECK (status IN ('active', 'suspended', 'closed')),
    -- decision 1: both spend models, chosen per customer; cap $2,000 default, $100 - $50,000
    spend_window            VARCHAR(20) NOT NULL DEFAULT 'rolling_30d'
                            CHECK (spend_window IN ('rolling_30d', 'calendar_month')),
    spend_cap_cents         BIGINT NOT NULL DEFAULT 200000
                            CHECK (spend_cap_cents BETWEEN 10000 AND 5000000),
    balance_cents           BIGINT NOT NULL DEFAULT 0 CHECK (balance_cents >= 0),
    committed_charges_cents BIGINT NOT NULL DEFAULT 0 CHECK (committed_charges_cents >= 0),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE service_instances (
    instance_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   INTEGER NOT NULL REFERENCES customers (customer_id),
    service_type  SMALLINT NOT NULL CHECK (service_type IN (1, 2, 3)),
    -- decision 2: the tier of a service; limits from the catalogue, overridden by config
    tier          VARCHAR(20) NOT NULL CHECK (tier IN ('starter', 'pro', 'enterprise')),
    enabled       BOOLEAN NOT NULL DEFAULT true,
    config        JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (customer_id, service_type),
    CONSTRAINT service_instances_rps_are_counts CHECK (
        (NOT config ? 'guaranteed_rps' OR jsonb_typeof(config -> 'guaranteed_rps') = 'number')
        AND (NOT config ? 'burst_rps' OR jsonb_typeof(config -> 'burst_rps') = 'number')),
    CONSTRAINT service_instances_enterprise_limits CHECK (
        tier <> 'enterprise' OR config ? 'guaranteed_rps')
);

-- decision 5: both the encrypted full key (PK) and its HMAC; the fingerprint is derived
CREATE TABLE api_keys (
    api_key_id    VARCHAR(100) PRIMARY KEY,  -- the full key, AES-GCM encrypted (base64)
    api_key_hash  CHAR(64) NOT NULL UNIQUE CHECK (api_key_hash ~ '^[0-9a-f]{64}$'),
    api_key_fp    INTEGER NOT NULL CHECK (api_key_fp <> 0),
    customer_id   INTEGER NOT NULL REFERENCES customers (customer_id),
    service_type  SMALLINT NOT NULL CHECK (service_type IN (1, 2, 3)),
    status        VARCHAR(20) NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ,
    -- the fingerprint is the hash's first 4 bytes as a signed big-endian int32
    CONSTRAINT api_keys_fp_matches_hash
        CHECK (api_key_fp = ('x' || substr(api_key_hash, 1, 8))::bit(32)::INTEGER),
    CONSTRAINT api_keys_revoked_at CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX api_keys_fp ON api_keys (api_key_fp);
-- a new key whose fingerprint collides with an active key is refused (regenerate it)
CREATE UNIQUE INDEX api_keys_active_fp_unique ON api_keys (api_key_fp) WHERE status = 'active';
CREATE INDEX api_keys_customer ON api_keys (customer_id);

CREATE TABLE seal_keys (
    seal_key_id   VARCHAR(100) PRIMARY KEY,
    customer_id   INTEGER NOT NULL REFERENCES customers (customer_id),
    public_key    TEXT,
    enabled       BOOLEAN NOT NULL DEFAULT true,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX seal_keys_customer ON seal_keys (customer_id);

-- decision 6: the packages each seal key serves
CREATE TABLE seal_key_packages (
    seal_key_id   VARCHAR(100) NOT NULL REFERENCES seal_keys (seal_key_id) ON DELETE CASCADE,
    package_id    VARCHAR(100) NOT NULL,
    PRIMARY KEY (seal_key_id, package_id)
);

-- decision 3: INTEGER customer ids here too (the review's appendix had UUID)
CREATE TABLE customer_encryption_keys (
    customer_id   INTEGER NOT NULL REFERENCES customers (customer_id),
    key_version   INTEGER NOT NULL CHECK (key_version > 0),
    encrypted_key BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at    TIMESTAMPTZ,
    PRIMARY KEY (customer_id, key_version)
);

-- decision 4: the review's names; request_id makes writes idempotent. api_key_fp rather than
-- customer_id: raw logs are persisted as ingested, before resolution.
CREATE TABLE haproxy_raw_logs (
    request_id         TEXT NOT NULL,
    ts                 TIMESTAMPTZ NOT NULL,
    client_ip          INET,
    api_key_fp         INTEGER,
    service_type       SMALLINT,
    network            SMALLINT,
    server_id          SMALLINT,
    fe_type            SMALLINT,
    traffic_type       SMALLINT NOT NULL DEFAULT 0,
    event_type         SMALLINT NOT NULL DEFAULT 0,
    key_metadata       TEXT,
    status_code        SMALLINT NOT NULL,
    bytes_sent         BIGINT NOT NULL,
    path_prefix        VARCHAR(10) NOT NULL DEFAULT '',
    time_request_ms    INTEGER NOT NULL DEFAULT -1,  -- TR
    time_queue_ms      INTEGER NOT NULL DEFAULT -1,  -- Tw
    time_connect_ms    INTEGER NOT NULL DEFAULT -1,  -- Tc
    time_response_ms   INTEGER NOT NULL DEFAULT -1,  -- Tr
    time_total_ms      INTEGER NOT NULL DEFAULT -1,  -- Ta
    backend_id         INTEGER,
    termination_state  VARCHAR(4) NOT NULL DEFAULT '',
    config_hex         TEXT,
    source_stream      TEXT NOT NULL,
    source_offset      BIGINT NOT NULL,
    CONSTRAINT haproxy_raw_logs_request_id_unique UNIQUE (request_id)
);
CREATE INDEX haproxy_raw_logs_ts ON haproxy_raw_logs (ts);
CREATE INDEX haproxy_raw_logs_fp_ts ON haproxy_raw_logs (api_key_fp, ts);

-- customer 0 is the `unauthenticated` bucket, so usage rows carry no foreign key
CREATE TABLE usage_minutes (
    customer_id    INTEGER NOT NULL CHECK (customer_id >= 0),
    service_type   SMALLINT NOT NULL CHECK (service_type IN (1, 2, 3)),
    network        SMALLINT NOT NULL CHECK (network IN (0, 1, 2, 3)),
    window_start   TIMESTAMPTZ NOT NULL CHECK (date_trunc('minute', window_start) = window_start),
    revision       BIGINT NOT NULL,
    requests       BIGINT NOT NULL DEFAULT 0,
    billable       BIGINT NOT NULL DEFAULT 0,
    bytes_sent     BIGINT NOT NULL DEFAULT 0,
    denied         BIGINT NOT NULL DEFAULT 0,
    client_errors  BIGINT NOT NULL DEFAULT 0,
    server_errors  BIGINT NOT NULL DEFAULT 0,
    ta_sum_ms      BIGINT NOT NULL DEFAULT 0,
    final          BOOLEAN NOT NULL DEFAULT false,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, service_type, network, window_start)
);

CREATE TABLE usage_records (
    customer_id        INTEGER NOT NULL CHECK (customer_id >= 0),
    service_type       SMALLINT NOT NULL CHECK (service_type IN (1, 2, 3)),
    window_start       TIMESTAMPTZ NOT NULL CHECK (date_trunc('hour', window_start) = window_start),
    requests           BIGINT NOT NULL DEFAULT 0,
    billable_requests  BIGINT NOT NULL DEFAULT 0,
    bytes_sent         BIGINT NOT NULL DEFAULT 0,
    denied             BIGINT NOT NULL DEFAULT 0,
    client_errors      BIGINT NOT NULL DEFAULT 0,
    server_errors      BIGINT NOT NULL DEFAULT 0,
    ta_sum_ms          BIGINT NOT NULL DEFAULT 0,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT usage_records_window_unique UNIQUE (customer_id, service_type, window_start)
);

CREATE TABLE limit_events (
    event_id      VARCHAR(200) PRIMARY KEY,
    customer_id   INTEGER NOT NULL CHECK (customer_id >= 0),
    service_type  SMALLINT CHECK (service_type IN (1, 2, 3)),
    kind          VARCHAR(32) NOT NULL CHECK (kind IN (
                      'rate_exceeded', 'rate_cleared', 'spend_warning', 'spend_cap_reached',
                      'spend_cleared', 'balance_exhausted', 'balance_restored', 'invalid_key')),
    observed      BIGINT NOT NULL,
    limit_value   BIGINT NOT NULL,
    window_label  VARCHAR(100) NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    api_key_fp    INTEGER,
    region_id     SMALLINT,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX limit_events_customer_at ON limit_events (customer_id, at);

CREATE TABLE vault_versions (
    version         BIGINT PRIMARY KEY CHECK (version > 0),
    content_hash    CHAR(64) NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    customer_count  INTEGER NOT NULL CHECK (customer_count >= 0),
    path            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
