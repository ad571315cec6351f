"""Returning freed memory to the operating system.

CPython keeps memory it freed for reuse; after a burst (a batch of many new windows, a
recovery), glibc's malloc holds on to freed pages until ``malloc_trim`` releases them. A
long-running process calls ``release()`` now and then so that its resident memory follows
what it holds, not its peak. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
