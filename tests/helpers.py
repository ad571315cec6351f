"""Test-only helpers; what the tests share with the benchmarks and the demo (processes,
/metrics, topics, databases, HAProxy) is in meterstream/dev (docs/dev-services.md)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LINE_TEMPLATE = (
    '{{"ts":{ts}.{ms:03d},"request_id":"{rid}","client_ip":"10.1.2.3","api_key_fp":"{fp}",'
    '"service_type":"1","network":"1","server_id":"16","fe_type":"2","traffic_type":"1",'
    '"event_type":"0","key_metadata":"S","status":200,"bytes_sent":"{bytes}",'
    '"path":"v1\\/fetch_k","TR":0,"Tw":0,"Tc":1,"Tr":3,"Ta":4,"backend_id":"3",'
    '"termination_state":"----","config_hex":"00000000"}}'
)
FINGERPRINTS = ["cba0c270", "13d8864c", "16f58caf", "7e000001", "8000abcd"]


def json_line(i: int, tag: str = "t") -> str:
    """A line in the earlier form of deploy/haproxy/haproxy.cfg's JSON (quoted numbers, ``ts``
    in seconds, the hex fingerprint), which ingest still reads, with a unique request id."""
    return LINE_TEMPLATE.format(ts=1_795_600_000 + i // 1000, ms=i % 1000, rid=f"{tag}-{i:09d}",
                                fp=FINGERPRINTS[i % len(FINGERPRINTS)], bytes=100 + i % 900)


def own_services_or_skip(what: str):  # noqa: ANN201
    """The project's own dev services, for a test that stops or restarts one of them."""
    import pytest

    if os.environ.get("MS_TEST_EXTERNAL"):
        pytest.skip(f"{what}: only with the project's own services")
    from meterstream.dev.services import DevServices

    return DevServices.default()
