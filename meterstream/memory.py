"""Returning freed memory to the operating system, and keeping the garbage collector out of
the hot paths.

CPython keeps memory it freed for reuse; after a burst (a batch of many new windows, a
recovery), glibc's malloc holds on to freed pages until ``malloc_trim`` releases them. A
long-running process calls ``release()`` now and then so that its resident memory follows
what it holds, not its peak. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_trim = None
_name = ctypes.util.find_library("c")
if _name:
    try:
        _trim = ctypes.CDLL(_name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        _trim = None


def release() -> bool:
    """Gives free heap pages back to the OS; True when anything was released."""
    return bool(_trim(0)) if _trim is not None else False


# the collector's first generation runs after this many new container objects (Python's
# default: 700). A stage holds a round or a batch of a few objects per message, which with the
# default makes the collector run every few hundred messages and its older generations walk
# the whole round again and again (0.3-0.8 µs a message on this machine)
COLLECT_EVERY = 50_000


def tune_collector() -> None:
    """For a process that runs one stage: what is alive at start (modules, the models'
    validators, clients) lives as long as the process, so it is frozen out of the collector's
    scans, and the first generation runs every COLLECT_EVERY new objects (reference counting
    frees everything else; the collector only finds cycles, which the stages do not make)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(COLLECT_EVERY, 20, 20)
