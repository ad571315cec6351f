"""Reading a process's /metrics (the Prometheus text format) in the tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    """Every sample of an exposition (name, labels, value)."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def labels_of(labels: str) -> dict[str, str]:
    """``a="x",b="y"`` (as the exposition writes labels) as a dict."""
    if not labels:
        return {}
    (sample,) = samples(f"m{{{labels}}} 0\n")
    return dict(sample.labels)


def value(text: str, name: str, labels: str | dict[str, str] = "", default: float | None = None) -> float:
    """The value of the sample ``name`` with exactly these labels; KeyError when absent,
    unless a default is given."""
    wanted = labels_of(labels) if isinstance(labels, str) else labels
    for s in samples(text):
        if s.name == name and s.labels == wanted:
            return s.value
    if default is not None:
        return default
    raise KeyError(f"{name}{{{labels}}}")


def total(text: str, name: str, **where: tuple[str, ...] | str) -> float:
    """The sum of the samples ``name`` whose labels have the given values (a label given a
    tuple matches any of its values)."""
    def matches(sample: Sample) -> bool:
        return all(sample.labels.get(k) in ((v,) if isinstance(v, str) else v) for k, v in where.items())

    return sum(s.value for s in samples(text) if s.name == name and matches(s))
