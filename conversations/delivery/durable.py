"""Saving through a database outage: the ORM from async code, retried while the database is away.

A reply's text lives in its task's memory until it is saved; a PostgreSQL restart or a
network blip must not lose it. `call(fn, *args, within=seconds)` runs `fn` in the
database thread (`database_sync_to_async`, which also drops a broken connection, so the
next try reconnects) and tries again with a growing pause while the database cannot be
reached, up to `within` seconds; then the last error is raised. Errors that are not
about reaching the database (a constraint, bad SQL) are raised at once.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)

UNREACHABLE = (OperationalError, InterfaceError)


async def call(fn, *args, within=0.0, **kwargs):
    deadline = time.monotonic() + within
    pause = 0.2
    while True:
        try:
            return await database_sync_to_async(fn)(*args, **kwargs)
        except UNREACHABLE as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning(
                "the database did not answer (%s); trying %s again in %.1f s",
                first_line(exc),
                getattr(fn, "__name__", "a save"),
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


def first_line(exc):
    """An exception as one short line for the log (psycopg's messages run over several)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
