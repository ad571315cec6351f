"""`python -m bench [NAME] [ARGS...]`: run every benchmark, or the one named."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["ingest", "worker", "sink", "e2e"]


def main() -> None:
    args = sys.argv[1:]
    names = [args.pop(0)] if args and args[0] in BENCHMARKS else BENCHMARKS
    for name in names:
        print(f"## bench.{name}")
        sys.argv = [f"bench.{name}", *args]
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main()
