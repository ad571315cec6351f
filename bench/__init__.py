"""Benchmarks: each prints its figures beside a reference measured in the same run.

They run in development mode (MS_DEV=1, docs/security.md): the built-in development keys and
the local plaintext services, for this process and every process it starts. The real HAProxy
they run (meterstream/dev/haproxy.py) hashes keys with the built-in development key, as the
development-mode settings do.
"""

from meterstream import devmode

devmode.enable()
