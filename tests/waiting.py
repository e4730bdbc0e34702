"""Waiting for something to happen, with a deadline: a test waits for the condition it needs, never
for a fixed time in the hope that it has happened by then.

    wait_until(lambda: registry.status()["tiny"]["state"] == "ready")
    user_message, reply = await until(settled_messages)   # an async predicate, from async code
"""

import asyncio
import inspect
import time


def wait_until(predicate, timeout=10, interval=0.02, what=None):
    """Call `predicate()` until it returns something true, and return that; fail once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or _name(predicate)} not so after {timeout} s (last: {value!r})")
        time.sleep(interval)


async def until(predicate, timeout=10, interval=0.02, what=None):
    """`wait_until` for async code: the event loop runs meanwhile; `predicate` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or _name(predicate)} not so after {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


def _name(predicate):
    name = getattr(predicate, "__name__", "the condition")
    return "the condition" if name == "<lambda>" else name
