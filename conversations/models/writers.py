"""Who writes a reply, and what happens to it when that writer goes away.

Every message row names the process that saved it (`Message.writer`: host, pid and a
token drawn at start), and while a reply streams its writer renews the row's
`heartbeat_at` every CHAT_HEARTBEAT_SECONDS. A streaming row whose writer is gone is
marked `interrupted` with the text last flushed, by whichever process notices first:

- a process of this host whose pid no longer runs is gone at once (a restart, a kill);
- any writer silent for CHAT_WRITER_TIMEOUT_SECONDS is gone (another host, a hung process).

A live writer's rows are never touched, so several server processes share one database:
one starting up, stopping or dying changes nothing of the others' replies. Each process
looks at start-up (its first request), then on every heartbeat; the rows it ends are
announced to their conversations' pages (`done` frames).

A row this process saved but no longer writes (its turn failed half way) has no
heartbeat either, and goes the same way. API calls that keep no conversation hold their
place under the reply cap by a running `UnkeptCallUsage` row, renewed and ended the same way.
This module holds the identity and the sets of rows being written (`writing`, `calling`);
the clock is heartbeat.py, the queries are `Message.objects.orphaned()`,
`.interrupt_orphans()`, `.renew()` and `UnkeptCallUsage.objects.end_orphans()`, `.renew()`.
"""

import os
import secrets
import socket

_identity = {}  # pid -> this process's writer name (a forked child draws its own)
writing = set()  # ids of the replies this process is writing now (reply tasks, arena threads)
calling = set()  # ids of the API calls without a row of their own it answers now (UnkeptCallUsage)


def identity():
    """This process's writer name: "host:pid:token"."""
    pid = os.getpid()
    if pid not in _identity:
        _identity[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
    return _identity[pid]


def is_gone(writer):
    """True if the named writer certainly no longer runs: no name, or a process of this host that has exited.

    A writer on another host (or a pid reused by another program here) is judged by its
    heartbeat alone.
    """
    if not writer:
        return True
    if writer == identity():
        return False
    host, _, rest = writer.partition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False
