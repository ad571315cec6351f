"""A generated metering corpus with its truth, computed independently of meter/: config
states for the compacted topics, LogRecords in per-file order (with tailer-style repeats),
the usage totals every window must end with, and the limit events that must appear.

Used by tests/test_worker.py and bench/worker.py.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field

from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import LimitKind, Network, ServiceType, SpendWindow, Tier, TrafficType
from meterstream.schemas.limits import event_id
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.usage import COUNTS
from meterstream.schemas.wire import encode

BASE_TS = 1_795_165_200_000  # 2026-11-20 09:00:00 UTC, a whole hour
DOLLAR = 1_000_000


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _fp(h: str) -> int:
    return int.from_bytes(bytes.fromhex(h[:8]), "big", signed=True) or 1


@dataclass
class Corpus:
    config: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)  # (logical topic, key, value)
    records: list[LogRecord] = field(default_factory=list)  # in sending order
    usage: dict[tuple[int, int, int, int], dict[str, int]] = field(default_factory=dict)
    # id -> kind, observed, limit, at (the event time of the crossing)
    events: dict[str, tuple[LimitKind, int, int, int]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    fps: dict[str, int] = field(default_factory=dict)  # scenario key name -> fingerprint

    def encoded(self) -> list[tuple[bytes, bytes]]:
        return [(key_of(r), encode(r)) for r in self.records]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.c = Corpus()
        self.offsets: dict[str, int] = defaultdict(int)
        self.key_owner: dict[int, tuple[int, ServiceType]] = {}
        self.tail: list[LogRecord] = []  # sent last, out of event-time order

    def customer(self, cid: int, **kw: object) -> None:
        state = CustomerState(customer_id=cid, balance_micros=10_000 * DOLLAR, **kw)  # type: ignore[arg-type]
        self.c.config.append((topics.METER_CUSTOMERS, key_of(state), encode(state)))

    def instance(self, cid: int, service: ServiceType, tier: Tier, **kw: object) -> None:
        state = InstanceState(customer_id=cid, service_type=service, tier=tier, **kw)  # type: ignore[arg-type]
        self.c.config.append((topics.METER_INSTANCES, key_of(state), encode(state)))

    def key(self, name: str, cid: int, service: ServiceType, active: bool = True) -> int:
        h = _hash(name)
        fp = _fp(h)
        self.c.fps[name] = fp
        state = ApiKeyState(api_key_fp=fp, api_key_hash=h, customer_id=cid, service_type=service)
        self.c.config.append((topics.METER_APIKEYS, key_of(state), encode(state)))
        if not active:  # revoked: published, then tombstoned, as sync-config does
            self.c.config.append((topics.METER_APIKEYS, key_of(state), None))
        else:
            self.key_owner[fp] = (cid, service)
        return fp

    def record(self, stream: str, ts: int, fp: int | None, service: ServiceType, *, status: int = 200,
               traffic: TrafficType = TrafficType.GUARANTEED, network: int = 1, region: int = 1,
               counted_as: int | None = None, refused: str | None = None, late: bool = False,
               event_type: int = 0, hint: bool = True) -> LogRecord:
        """One request. HAProxy names the key's customer (``hint``) as its map does, except
        for lines of frontends that do not log it (``hint=False``: the worker forwards)."""
        n = len(self.c.records) + len(self.tail)
        owner = self.key_owner.get(fp) if fp is not None else None
        rec = LogRecord(ts=ts, request_id=f"r{n}", client_ip="203.0.113.9", api_key_fp=fp,
                        service_type=service, network=Network(network), server_id=(region << 4) | 1,
                        traffic_type=traffic, status=status, bytes_sent=100 + n % 900, Ta=n % 50,
                        event_type=event_type, customer_id=owner[0] if owner and hint else None,
                        src=SourcePosition(stream=stream, offset=0))
        (self.tail if late else self.c.records).append(rec)
        if refused is not None:
            self.c.rejected[refused] = self.c.rejected.get(refused, 0) + 1
            return rec
        # HAProxy's verdict stands (docs/metering.md); a key of another service is nobody's there
        authenticated = owner and owner[1] == service and not 10 <= event_type <= 16
        customer = owner[0] if owner is not None and authenticated else 0
        if counted_as is not None:
            assert customer == counted_as
        w = self.c.usage.setdefault((customer, int(service), network, ts - ts % 60_000), dict.fromkeys(COUNTS, 0))
        w["requests"] += 1
        w["billable"] += int(traffic.is_chargeable and 200 <= status <= 399)
        w["bytes_sent"] += rec.bytes_sent
        w["denied"] += int(traffic.is_denied)
        w["client_errors"] += int(400 <= status <= 499)
        w["server_errors"] += int(500 <= status <= 599)
        w["ta_sum_ms"] += max(rec.Ta, 0)
        return rec

    def finish(self) -> Corpus:
        """Sends in event-time order (as HAProxy writes), then the late ones; file offsets
        follow the sending order; every 97th record is followed by a tailer-style repeat of
        one a little before it (same line, same source position)."""
        ordered = sorted(self.c.records, key=lambda r: r.ts) + self.tail
        out: list[LogRecord] = []
        for rec in ordered:
            offset = self.offsets[rec.src.stream]
            self.offsets[rec.src.stream] += 200
            out.append(rec.model_copy(update={"src": SourcePosition(stream=rec.src.stream, offset=offset)}))
            if len(out) % 97 == 0:
                out.append(out[-1 - self.rng.randrange(min(5, len(out)))])
        self.c.records = out
        return self.c

    def event(self, customer: int, kind: LimitKind, window: str, observed: int, limit: int, at: int,
              service: ServiceType | None = None) -> None:
        self.c.events[event_id(customer, kind, window, service)] = (kind, observed, limit, at)


def build(bulk: int = 2_000, seed: int = 7, now_ms: int | None = None, unnamed_file: bool = True) -> Corpus:
    """The metering scenarios (docs/metering.md), plus ``bulk`` records of ordinary traffic.

    Event time runs from BASE_TS for about 3 minutes plus bulk/400 seconds. ``now_ms`` (the
    wall clock) places the one event from the future. HAProxy names each key's customer, as
    deploy/haproxy/haproxy.cfg logs it, except (``unnamed_file``) in the third file of ordinary
    traffic, whose frontend does not: the worker forwards those records.
    """
    b = _Builder(seed)
    seal, grpc = ServiceType.SEAL, ServiceType.GRPC
    # -- configuration --------------------------------------------------------------------
    ordinary = list(range(1001, 1021))
    for cid in ordinary:
        b.customer(cid)
        b.instance(cid, seal, Tier.STARTER)
        b.instance(cid, grpc, Tier.PRO)
        b.key(f"k{cid}s", cid, seal)
        b.key(f"k{cid}g", cid, grpc)
    b.customer(2001)  # rate: starter, 100 rps
    b.instance(2001, seal, Tier.STARTER)
    fp_rate = b.key("rate", 2001, seal)
    b.customer(2002)  # pro: 1,000 rps guaranteed, 2,000 burst: 1,500 rps is within the burst
    b.instance(2002, seal, Tier.PRO, guaranteed_rps=50, burst_rps=150)
    fp_burst = b.key("burst", 2002, seal)
    b.customer(2003, spend_cap_micros=100 * DOLLAR, committed_charges_micros=99_900_000)  # $99.90 of $100
    b.instance(2003, seal, Tier.ENTERPRISE, guaranteed_rps=5_000)
    fp_cap = b.key("cap", 2003, seal)
    state = CustomerState(customer_id=2004, balance_micros=50_000, spend_window=SpendWindow.CALENDAR_MONTH)
    b.c.config.append((topics.METER_CUSTOMERS, key_of(state), encode(state)))  # $0.05 prepaid: 500 requests
    b.instance(2004, seal, Tier.STARTER)
    fp_balance = b.key("balance", 2004, seal)
    fp_revoked = b.key("revoked", 1001, seal, active=False)
    fp_unknown = _fp(_hash("never-issued"))
    fp_grpc_key = b.c.fps["k1001g"]

    t0 = BASE_TS
    # -- ordinary traffic over three files, interleaved in event-time order ---------------
    files = ["edge-1:2049:101:aa", "edge-2:2049:202:bb", "edge-3:2049:303:cc"]
    span_ms = 180_000 + bulk * 1000 // 400
    for i in range(bulk):
        cid = b.rng.choice(ordinary)
        service = b.rng.choice((seal, grpc))
        fp = b.c.fps[f"k{cid}{'s' if service is seal else 'g'}"]
        status = b.rng.choice((200, 200, 200, 204, 301, 404, 429, 500))
        traffic = b.rng.choice((TrafficType.GUARANTEED, TrafficType.BURST, TrafficType.NA,
                                TrafficType(3) if status == 429 else TrafficType.GUARANTEED))
        b.record(files[i % 3], t0 + i * span_ms // max(bulk, 1), fp, service, status=status, traffic=traffic,
                 network=b.rng.choice((0, 1)), region=b.rng.choice((1, 2)), counted_as=cid,
                 hint=not (unnamed_file and i % 3 == 2))

    # -- rate: 2001 sends 150 requests in each of 5 seconds from t0+10 s ------------------
    s0 = (t0 + 10_000) // 1000
    for sec in range(5):
        for j in range(150):
            b.record("edge-rate:1:1:r1", (s0 + sec) * 1000 + j * 6, fp_rate, seal, counted_as=2001)
    b.event(2001, LimitKind.RATE_EXCEEDED, f"r1:{s0 + 2}", 150, 100, (s0 + 2) * 1000, seal)
    # throttled, its client keeps retrying at 1.5x its rate: HAProxy refuses those (429), and
    # the rate counts what HAProxy served (docs/metering.md), so the breach clears 60 s after
    for sec in range(5, 65):
        for j in range(150):
            b.record("edge-rate:1:1:r1", (s0 + sec) * 1000 + j * 6, fp_rate, seal, status=429,
                     traffic=TrafficType.DENIED, counted_as=2001)
    b.event(2001, LimitKind.RATE_CLEARED, f"r1:{s0 + 4 + 60}", 0, 100, (s0 + 64) * 1000, seal)
    # served over its rate again: throttled again, and cleared once more
    for sec in range(70, 75):
        for j in range(150):
            b.record("edge-rate:1:1:r1", (s0 + sec) * 1000 + j * 6, fp_rate, seal, counted_as=2001)
    b.event(2001, LimitKind.RATE_EXCEEDED, f"r1:{s0 + 72}", 150, 100, (s0 + 72) * 1000, seal)
    b.event(2001, LimitKind.RATE_CLEARED, f"r1:{s0 + 74 + 60}", 0, 100, (s0 + 134) * 1000, seal)
    # pro with a burst allowance: 140 rps is over its guaranteed 50 but within its burst 150
    for sec in range(5):
        for j in range(140):
            b.record("edge-rate:1:1:r2", (s0 + sec) * 1000 + j * 7, fp_burst, seal, counted_as=2002)

    # -- spend: 2003 is at $99.90 of its $100 cap; 1,000 billable requests reach it --------
    for j in range(1_005):
        b.record("edge-spend:1:1:s", t0 + 20_000 + j * 20, fp_cap, seal, counted_as=2003)
    b.event(2003, LimitKind.SPEND_WARNING, "rolling_30d:1", 99_900_100, 80 * DOLLAR, t0 + 20_000)
    b.event(2003, LimitKind.SPEND_CAP_REACHED, "rolling_30d:1", 100 * DOLLAR, 100 * DOLLAR, t0 + 20_000 + 999 * 20)
    # -- balance: 2004 prepaid $0.05; the 500th billable request exhausts it ---------------
    month = "2026-11"  # BASE_TS is in November 2026
    for j in range(1_100):
        b.record("edge-spend:1:1:b", t0 + 30_000 + j * 20, fp_balance, seal,
                 status=200 if j % 2 == 0 else 404, counted_as=2004)
    b.event(2004, LimitKind.BALANCE_EXHAUSTED, f"{month}:1", 50_000, 50_000, t0 + 30_000 + 998 * 20)

    # -- keys that resolve to nobody -------------------------------------------------------
    for j in range(25):  # keeps hitting: one invalid_key event, at the 10th hit
        b.record("edge-1:2049:101:aa", t0 + 40_000 + j * 100, fp_unknown, seal, counted_as=0)
    hour = t0 - t0 % 3_600_000
    b.event(0, LimitKind.INVALID_KEY, f"fp{fp_unknown}:{hour}", 10, 10, t0 + 40_000 + 9 * 100)
    for j in range(5):  # a revoked key, a few times: counted, not reported
        b.record("edge-2:2049:202:bb", t0 + 41_000 + j * 100, fp_revoked, seal, counted_as=0)
    for j in range(3):  # a grpc key on the seal service
        b.record("edge-3:2049:303:cc", t0 + 42_000 + j * 100, fp_grpc_key, seal, counted_as=0)
    b.record("edge-3:2049:303:cc", t0 + 42_500, None, seal, status=401, traffic=TrafficType(3), counted_as=0)
    for j in range(5):  # HAProxy refused a key whose fingerprint is 1001's (a collision): not 1001's
        b.record("edge-1:2049:101:aa", t0 + 43_000 + j * 100, b.c.fps["k1001s"], seal, status=401,
                 traffic=TrafficType(3), event_type=11, counted_as=0)

    # -- late, too late, from the future ----------------------------------------------------
    b.record("edge-late:1:1:l", t0 + 50_000 - 3_600_000, b.c.fps["k1001s"], seal, counted_as=1001, late=True)
    b.record("edge-late:1:1:l", t0 + 50_000 - 49 * 3_600_000, b.c.fps["k1001s"], seal, refused="too_late",
             late=True)
    future = max(now_ms or 0, t0 + span_ms) + 3_600_000
    b.record("edge-late:1:1:l", future, b.c.fps["k1001s"], seal, refused="from_the_future", late=True)

    # -- time moves on: the rate breach clears (70 s of other traffic after it) -------------
    end = max(t0 + span_ms, (s0 + 140) * 1000)
    for j in range(200):
        b.record("edge-1:2049:101:aa", end + j * 300, b.c.fps["k1002s"], seal, counted_as=1002)
        b.record("edge-2:2049:202:bb", end + j * 300, b.c.fps["k1003s"], seal, counted_as=1003)
    return b.finish()
