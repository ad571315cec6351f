"""Development only: the local services, the demo, the sample data and the harness the tests,
the benchmarks and the demo share. The runtime never imports it (the CLI's ``dev`` and
``demo`` commands import it when run). See docs/layout.md."""
