"""The meter stage over the generated corpus, in process (no Kafka): the usage totals and limit
events (with the moment each crossing happens) equal the corpus's independently computed
truth, whatever the batch size and however records are routed, and replaying every record
again changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.dev.corpus import BASE_TS, build
from meterstream.meter.aggregates import StateTable, dumps
from meterstream.meter.config_view import ConfigView, slot
from meterstream.meter.meter_stage import TABLE_KINDS, BatchResult, MeterPartition, Tables
from meterstream.meter.resolve import resolve
from meterstream.schemas.config import InstanceState
from meterstream.schemas.enums import ServiceType, Tier
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.resolved import Forwarded, ResolvedBatch
from meterstream.schemas.usage import COUNTS
from tests.examples import configure


class Outcome:
    def __init__(self) -> None:
        self.usage: dict = {}
        self.events: list = []
        self.rejected: dict[str, int] = {}

    def take(self, result: BatchResult) -> None:
        for row in result.usage:
            w = row.model()
            key = (w.customer_id, int(w.service_type), int(w.network), w.window_start)
            if key not in self.usage or self.usage[key].revision <= w.revision:
                self.usage[key] = w
        self.events += result.events
        for r in result.rejected:
            self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1

    def totals(self) -> dict:
        return {k: {n: getattr(w, n) for n in COUNTS} for k, w in self.usage.items()}

    def crossings(self) -> dict:
        return {e.event_id: (e.kind, e.observed, e.limit, e.at) for e in self.events}


def new_tables() -> Tables:
    # as in the worker: values kept serialized, decoded once per batch
    return Tables(**{name: StateTable({}, kind) for name, kind in TABLE_KINDS.items()})


def write(tables: Tables, result: BatchResult) -> None:
    for name, writes in result.writes.items():
        table = getattr(tables, name)
        for key, value in writes.items():
            if value is None:
                table.pop(key, None)
            else:  # the bytes the changelog carries
                table[key] = dumps(value)
        table.clear_cache()


def run(records: list, view: ConfigView, batch: int, tables: Tables | None = None,
        now: int | None = None) -> tuple[Outcome, Tables]:
    """The corpus through one partition (every customer is its own), in batches."""
    tables = tables or new_tables()
    meter = MeterPartition(0, tables, view)
    out = Outcome()
    now = now or time.time_ns() // 1_000_000
    numbered = list(enumerate(records))
    for start in range(0, len(numbered), batch):
        result = meter.process(numbered[start:start + batch], now, drained=start + batch >= len(numbered))
        assert not result.forward
        out.take(result)
        write(tables, result)
    return out, tables
@pytest.fixture(scope="module")
def corpus():  # noqa: ANN201
    return build(bulk=3_000, now_ms=time.time_ns() // 1_000_000)


@pytest.fixture(scope="module")
def view(corpus) -> ConfigView:  # noqa: ANN001
    v = ConfigView()
    for topic, key, value in corpus.config:
        v.apply(topic, key, value)
    return v


@pytest.mark.parametrize("batch", [1, 7, 500, 100_000])
def test_corpus_truth_whatever_the_batches(corpus, view: ConfigView, batch: int) -> None:  # noqa: ANN001
    out, _ = run(corpus.records, view, batch)
    assert out.totals() == corpus.usage
    assert all(w.final for k, w in out.usage.items() if k[3] + 60_000 <= max(r.ts for r in corpus.records[:-1]))
    assert out.crossings() == corpus.events
    assert len(out.events) == len(corpus.events)
    assert out.rejected == corpus.rejected


def test_a_replay_of_everything_changes_nothing(corpus, view: ConfigView) -> None:  # noqa: ANN001
    first, tables = run(corpus.records, view, 1_000)
    again, _ = run(corpus.records, view, 1_000, tables=tables)
    assert again.events == []
    for key, w in again.usage.items():  # re-published at most, with the same totals
        assert {n: getattr(w, n) for n in COUNTS} == corpus.usage[key]


def test_invalid_key_events_once_an_hour_from_the_threshold() -> None:
    from meterstream.meter.resolve import InvalidKeyTracker

    tracker = InvalidKeyTracker()
    hour = 1_795_165_200_000
    fired = [tracker.hit(-5, hour + i, threshold=3) for i in range(10)]
    assert [i for i, e in enumerate(fired) if e] == [2]
    assert fired[2].event_id == f"0:-:invalid_key:fp-5:{hour}" and fired[2].api_key_fp == -5
    assert tracker.hit(-5, hour - 1, threshold=3) is None  # a late hit of an earlier hour
    later = [tracker.hit(-5, hour + 3_600_000 + i, threshold=3) for i in range(3)]
    assert later[2] is not None and later[2].event_id.endswith(str(hour + 3_600_000))


def test_resolution_reasons(view: ConfigView, corpus) -> None:  # noqa: ANN001
    from meterstream.schemas.enums import ServiceType, UnauthReason

    assert resolve(view.keys, corpus.fps["k1001s"], ServiceType.SEAL) == (1001, None)
    assert resolve(view.keys, corpus.fps["k1001g"], ServiceType.SEAL) == (0, UnauthReason.WRONG_SERVICE)
    assert resolve(view.keys, corpus.fps["revoked"], ServiceType.SEAL) == (0, UnauthReason.UNKNOWN_KEY)
    assert resolve(view.keys, None, ServiceType.SEAL) == (0, UnauthReason.NO_KEY)
    # HAProxy's verdict stands: a key it refused is nobody's, whatever its fingerprint (docs/metering.md)
    for refused in range(10, 17):
        assert resolve(view.keys, corpus.fps["k1001s"], ServiceType.SEAL, refused) == (0, UnauthReason.REFUSED)


def test_a_raised_cap_clears_the_breach_without_new_traffic(corpus) -> None:  # noqa: ANN001
    from meterstream.schemas import topics
    from meterstream.schemas.config import CustomerState
    from meterstream.schemas.topics import key_of
    from meterstream.schemas.wire import encode

    view = ConfigView()
    for topic, key, value in corpus.config:
        view.apply(topic, key, value)
    tables = Tables({}, {}, {}, {})
    meter = MeterPartition(0, tables, view)
    changed = view.subscribe()
    first = meter.process(list(enumerate(corpus.records)), time.time_ns() // 1_000_000, drained=True)
    assert "2003:-:spend_cap_reached:rolling_30d:1" in {e.event_id for e in first.events}
    for name, writes in first.writes.items():
        getattr(tables, name).update(writes)
    changed.clear()
    raised = CustomerState(customer_id=2003, spend_cap_micros=200_000_000, committed_charges_micros=99_900_000,
                           balance_micros=10**10)
    view.apply(topics.METER_CUSTOMERS, key_of(raised), encode(raised))
    assert changed == {2003}
    after = meter.process([], time.time_ns() // 1_000_000, drained=True, changed_customers=set(changed))
    assert [(e.event_id, e.observed, e.limit) for e in after.events] == [
        ("2003:-:spend_cleared:rolling_30d:1", 100_000_500, 200_000_000)]  # 1,005 requests sent


def two_partitions(view: ConfigView) -> list[MeterPartition]:
    """Two partitions as the worker runs them; a customer's partition is its parity here."""
    partition_of: Callable[[int], int] = lambda customer: customer % 2  # noqa: E731
    return [MeterPartition(p, new_tables(), view, partition_of=partition_of, routes=2) for p in (0, 1)]


@pytest.mark.parametrize("schedule", ["interleaved", "partition 0 first", "partition 1 first"])
def test_records_forwarded_between_partitions_count_once_each(corpus, view: ConfigView, schedule: str) -> None:  # noqa: ANN001
    """A record's key places it (the customer HAProxy named, else its fingerprint): records
    keyed by fingerprint (a frontend that does not log the customer) and customer 0's reach
    the wrong partition and are forwarded in packed batches; a batch delivered twice (a
    worker replay) counts once. Interleaved: forwarded batches arrive 20 s of event time late
    and hold time back instead of being late. One partition first (a worker catching up on a
    backlog): the other partition's progress runs minutes ahead, and, once it has read
    everything, does not make this partition's own records late."""
    from meterstream.schemas.topics import log_key

    meters = two_partitions(view)
    out = Outcome()
    forwarded = repeats = 0
    now = time.time_ns() // 1_000_000
    by_partition: dict[int, list] = {0: [], 1: []}
    for offset, rec in enumerate(corpus.records):
        key = log_key(rec)
        home = int(key) % 2 if key.isdigit() else (rec.api_key_fp or 0) % 2
        by_partition[home].append((offset, rec))
    step = 400
    starts = range(0, max(len(v) for v in by_partition.values()), step)
    if schedule == "interleaved":
        steps = [(p, start) for start in starts for p in (0, 1)]
        lag = 20_000
    else:
        first = int(schedule.split()[1])
        steps = [(p, start) for p in (first, 1 - first) for start in starts]
        lag = 0
    in_flight: list[tuple[int, int, ResolvedBatch]] = []  # (deliver after event time, destination, batch)
    for i, (p, start) in enumerate(steps):
        chunk = by_partition[p][start:start + step]
        drained = start + step >= len(by_partition[p])
        result = meters[p].process(chunk, now, drained=drained)
        out.take(result)
        write(meters[p].tables, result)
        for dest, items in result.forward.items():
            batch = ResolvedBatch(partition=p, progress=result.progress, idle=drained, records=[
                Forwarded(customer_id=c, unauth=u, offset=o, record=r) for c, u, o, r in items])
            in_flight += [((result.progress or 0) + lag, dest, batch)] * 2  # delivered twice
        clock = min(m.upstream.get(m.partition, 0) for m in meters)
        due = [f for f in in_flight if f[0] <= clock or lag == 0 or i == len(steps) - 1]
        in_flight = [f for f in in_flight if f not in due]
        for _, dest, batch in due:
            result = meters[dest].process_forwarded([(0, batch)], now, drained=False)
            forwarded += len(batch.records)
            repeats += result.repeats
            out.take(result)
            write(meters[dest].tables, result)
    for meter in meters:
        out.take(meter.process([], now, drained=True))
    assert forwarded > 600 and repeats >= forwarded // 2  # each batch came twice
    assert out.totals() == corpus.usage
    assert out.crossings() == corpus.events
    assert out.rejected == corpus.rejected


def test_a_misrouted_forwarded_batch_is_refused(view: ConfigView, corpus) -> None:  # noqa: ANN001
    meters = two_partitions(view)
    record = corpus.records[0]
    customer = resolve(view.keys, record.api_key_fp, record.service_type)[0]
    wrong = 1 - customer % 2
    result = meters[wrong].process_forwarded(
        [(0, ResolvedBatch(partition=customer % 2, records=[Forwarded(customer_id=customer, offset=1, record=record)])),
         (1, ResolvedBatch(partition=wrong, records=[Forwarded(customer_id=customer, offset=2, record=record)])),
         (2, ResolvedBatch(partition=7, records=[Forwarded(customer_id=customer, offset=3, record=record)]))],
        time.time_ns() // 1_000_000, drained=True)
    assert [r.reason for r in result.rejected] == ["misrouted"] * 3 and result.applied == 0


HOUR = 3_600_000
adversarial = st.builds(
    lambda ts, fp, hint, service, network, server, traffic, status, size, stream, offset, event: LogRecord(
        ts=BASE_TS + ts, request_id="r", client_ip="x", api_key_fp=fp, customer_id=hint, service_type=service,
        network=network, server_id=server, traffic_type=traffic, status=status, bytes_sent=size,
        event_type=event, src=SourcePosition(stream=stream, offset=offset)),
    st.integers(-50 * HOUR, 2 * HOUR), st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1).filter(bool)),
    st.one_of(st.none(), st.integers(1, 2**31 - 1)), st.sampled_from([1, 2, 3]), st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 32767), st.sampled_from(list(range(7))), st.integers(-1, 999), st.integers(0, 2**53 - 1),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=256),
    st.integers(0, 2**63 - 1),
    st.sampled_from([0, 11, 50]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adversarial, min_size=1, max_size=300), st.integers(1, 50))
def test_every_state_value_stays_bounded(records: list[LogRecord], batch: int) -> None:
    """Adversarial records (any timestamps within two days, random fingerprints, regions and
    source streams, huge sizes and offsets) for customers the view knows and for nobody:
    every table value the stage writes stays below the worker's 256 KiB message bound."""
    view = ConfigView()
    for fp in {r.api_key_fp for r in records if r.api_key_fp is not None}:
        if fp % 3:  # two in three fingerprints belong to a customer
            view.keys[fp] = slot(abs(fp) % 5 + 1, fp % 3 + 1)
    configure(view, *(InstanceState(customer_id=customer, service_type=ServiceType(service), tier=Tier.ENTERPRISE,
                                    guaranteed_rps=1) for customer in range(1, 6) for service in (1, 2, 3)))
    tables = new_tables()
    meter = MeterPartition(0, tables, view)
    now = BASE_TS + 2 * HOUR
    numbered = list(enumerate(records))
    for start in range(0, len(numbered), batch):
        result = meter.process(numbered[start:start + batch], now, drained=True)
        for _, writes in result.writes.items():
            for value in writes.values():
                if value is not None:
                    assert len(dumps(value)) < 256 * 1024
        write(tables, result)
