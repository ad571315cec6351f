"""The meter stage and the resolver over the generated corpus, in process (no Kafka): the
usage totals and limit events equal the corpus's independently computed truth, whatever the
batch size, and replaying every record again changes nothing."""

from __future__ import annotations

import time

import orjson
import pytest

from meterstream.meter.aggregates import StateTable, dumps
from meterstream.meter.config_view import ConfigView
from meterstream.meter.meter_stage import TABLE_KINDS, MeterPartition, Tables
from meterstream.meter.resolve import resolve
from meterstream.schemas.enums import LimitKind
from meterstream.schemas.usage import COUNTS
from meterstream.schemas.wire import encode
from tests.corpus import BASE_TS, build


def resolved(corpus, view: ConfigView) -> list[dict]:  # noqa: ANN001
    out = []
    for i, rec in enumerate(corpus.records):
        customer, reason = resolve(view.keys, rec.api_key_fp, rec.service_type)
        d = orjson.loads(encode(rec))
        d.update(customer_id=customer, unauth=reason and reason.value,
                 upstream={"topic": "haproxy.logs", "partition": 0, "offset": i})
        out.append(d)
    return out


def run(records: list[dict], view: ConfigView, batch: int, tables: Tables | None = None,
        now: int | None = None) -> tuple[dict, list, dict, Tables]:
    # as in the worker: values kept serialized, decoded once per batch
    tables = tables or Tables(**{name: StateTable({}, kind) for name, kind in TABLE_KINDS.items()})
    meter = MeterPartition(0, tables, view)
    usage: dict = {}
    events: list = []
    rejected: dict = {}
    now = now or time.time_ns() // 1_000_000
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        result = meter.process(chunk, now, drained=start + batch >= len(records))
        for w in result.usage:
            key = (w.customer_id, int(w.service_type), int(w.network), w.window_start)
            if key not in usage or usage[key].revision <= w.revision:
                usage[key] = w
        events += result.events
        for r in result.rejected:
            rejected[r.reason] = rejected.get(r.reason, 0) + 1
        for name, writes in result.writes.items():
            table = getattr(tables, name)
            for key, value in writes.items():
                if value is None:
                    table.pop(key, None)
                else:  # the bytes the changelog carries
                    table[key] = dumps(value)
            table.clear_cache()
    return usage, events, rejected, tables


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
    usage, events, rejected, _ = run(resolved(corpus, view), view, batch)
    got = {k: {n: getattr(w, n) for n in COUNTS} for k, w in usage.items()}
    assert got == corpus.usage
    assert all(w.final for k, w in usage.items() if k[3] + 60_000 <= max(r.ts for r in corpus.records[:-1]))
    meter_events = {k: v for k, v in corpus.events.items() if v[0] is not LimitKind.INVALID_KEY}
    assert {e.event_id: (e.kind, e.observed, e.limit) for e in events} == meter_events
    assert len(events) == len(meter_events)
    assert rejected == corpus.rejected


def test_a_replay_of_everything_changes_nothing(corpus, view: ConfigView) -> None:  # noqa: ANN001
    records = resolved(corpus, view)
    usage, events, _, tables = run(records, view, 1_000)
    again, events_again, _, _ = run(records, view, 1_000, tables=tables)
    assert events_again == []
    for key, w in again.items():  # re-published at most, with the same totals
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


def test_a_raised_cap_clears_the_breach_without_new_traffic(corpus) -> None:  # noqa: ANN001
    from meterstream.schemas import topics
    from meterstream.schemas.config import CustomerState
    from meterstream.schemas.topics import key_of

    view = ConfigView()
    for topic, key, value in corpus.config:
        view.apply(topic, key, value)
    records = resolved(corpus, view)
    tables = Tables({}, {}, {}, {})
    meter = MeterPartition(0, tables, view)
    changed = view.subscribe()
    first = meter.process(records, time.time_ns() // 1_000_000, drained=True, changed_customers=set())
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


def test_a_lagging_upstream_partition_holds_time_back(corpus, view: ConfigView) -> None:  # noqa: ANN001
    """Records reach a meter partition through several haproxy.logs partitions, each in its
    own order; one may lag (a resolver restarting). Here upstream 1 runs 20 s of event time
    behind upstream 0: the results are those of the in-order run."""
    records = resolved(corpus, view)
    for r in records:
        r["upstream"]["partition"] = (r["api_key_fp"] or 0) % 2
    tail = [r for r in records if r["ts"] < BASE_TS or r["ts"] > BASE_TS + 86_400_000]  # late and future ones
    timely = [r for r in records if not any(r is t for t in tail)]
    skewed = sorted(timely, key=lambda r: r["ts"] + (20_000 if r["upstream"]["partition"] == 1 else 0)) + tail
    usage, events, rejected, _ = run(skewed, view, 500)
    assert {k: {n: getattr(w, n) for n in COUNTS} for k, w in usage.items()} == corpus.usage
    meter_events = {k: v for k, v in corpus.events.items() if v[0] is not LimitKind.INVALID_KEY}
    assert {e.event_id: (e.kind, e.observed, e.limit) for e in events} == meter_events
    assert rejected == corpus.rejected
