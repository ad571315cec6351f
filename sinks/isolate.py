"""Finding the rows Postgres refuses in a batch it refused.

The wire models bound every field to its column, so a batch normally goes in whole. Should a
table still refuse a row (a CHECK an operator added, a column narrower than the model: a
drift between schemas/ and the database), the whole COPY fails, and retrying it would fail
forever. The sink then calls ``refused_rows``: in a transaction that is always rolled back, it
writes the rows again in halves under savepoints, down to the single rows that fail. Those
are dead-lettered; the rest of the batch is written as usual. The search costs about
2 x log2(batch) writes per refused row, and nothing on a batch that goes in.
"""

from __future__ import annotations

from types import ModuleType

import asyncpg

# what Postgres (or asyncpg encoding a value for it) raises for a value it will not store:
# data exceptions (class 22: out of range, too long, bad encoding), integrity violations
# (class 23: CHECK, NOT NULL), program limits (class 54: an index row too large), and the
# client-side OverflowError, ValueError (UnicodeEncodeError, asyncpg's own DataError) of the
# binary COPY encoders
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError,
           OverflowError, ValueError)

Rows = list[tuple[int, tuple]]  # (the caller's index of the row, the row)


class _Rollback(Exception):
    pass


async def refused_rows(conn: asyncpg.Connection, batches: list[tuple[ModuleType, Rows]]) -> dict[int, str]:
    """index -> why, of every row a handler's ``write`` cannot write alone. Writes nothing."""
    found: dict[int, str] = {}
    try:
        async with conn.transaction():
            for handler, rows in batches:
                await _search(conn, handler, rows, found)
            raise _Rollback
    except _Rollback:
        pass
    return found


async def _search(conn: asyncpg.Connection, handler: ModuleType, rows: Rows, found: dict[int, str]) -> None:
    if not rows:
        return
    try:
        async with conn.transaction():  # a savepoint: a failed write leaves nothing behind
            await conn.execute(f"DELETE FROM {handler.STAGING}")  # rows a previous part staged
            await handler.write(conn, [row for _, row in rows])
        return
    except REFUSED as exc:
        if len(rows) == 1:
            found[rows[0][0]] = f"{type(exc).__name__}: {exc}"[:500]
            return
    middle = len(rows) // 2
    await _search(conn, handler, rows[:middle], found)
    await _search(conn, handler, rows[middle:], found)
