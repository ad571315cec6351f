-- Kafka offsets consumed by the Postgres sink, written in the same transaction as the rows
-- they produced ("storing offsets outside Kafka"): after a crash the sink seeks here, so no
-- message is applied twice or skipped. next_offset only grows.
CREATE TABLE sink_offsets (
    consumer     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL CHECK (partition >= 0),
    next_offset  BIGINT NOT NULL CHECK (next_offset >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
