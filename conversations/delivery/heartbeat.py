"""The clock of the writers (writers.py): this process renews the heartbeat of the replies it
writes and of the API calls it answers, and ends the orphans of writers that are gone (their
replies `interrupted`, their calls ended), every CHAT_HEARTBEAT_SECONDS.

`KeepHeartbeat` (chatsite/asgi.py) makes sure it runs on the event loop that serves.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from conversations.models import Message, UnkeptCallUsage

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews this process's streaming rows and ends orphaned ones, on the event loop that serves.

    `ensure()` is called on every request (cheap): the first call on an event loop starts the
    beat on that loop, whose first beat recovers what previous processes left. The request does
    not wait for it (a websocket handshake must not wait behind the database); `recovered` is set
    once it is done. `on_recovered` is an async callable given the rows ended, to tell their pages.
    """

    def __init__(self, on_recovered):
        self.on_recovered = on_recovered
        self.task = None
        self.loop = None
        self.failing = False
        self.recovered = None  # an asyncio.Event of the loop that beats

    async def ensure(self):
        loop = asyncio.get_running_loop()
        if self.loop is loop and self.task is not None and not self.task.done():
            return
        self.loop = loop
        self.recovered = asyncio.Event()
        self.task = loop.create_task(self._beat_forever(), name="chatsite-heartbeat")

    async def _beat_forever(self):
        await self.beat(renew=False)
        self.recovered.set()
        while True:
            await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
            await self.beat()

    async def beat(self, renew=True):
        try:
            if renew:
                await database_sync_to_async(_renew)()
            recovered = await database_sync_to_async(Message.objects.interrupt_orphans)()
            ended = await database_sync_to_async(UnkeptCallUsage.objects.end_orphans)()
        except DatabaseError as exc:
            if not self.failing:
                log.warning(
                    "heartbeat: the database is not answering (%s); retrying every %s s",
                    str(exc).strip().splitlines()[0][:200],
                    settings.CHAT_HEARTBEAT_SECONDS,
                )
            self.failing = True
            return
        if self.failing:
            log.warning("heartbeat: the database answers again")
            self.failing = False
        if ended:
            log.warning("ended %d API calls without a conversation: their writer is gone", ended)
        if recovered:
            log.warning(
                "marked %d replies interrupted: their writer is gone (%s)",
                len(recovered),
                ", ".join(sorted({m.writer or "unknown" for m in recovered})),
            )
            await self.on_recovered(recovered)


def _renew():
    Message.objects.renew()
    UnkeptCallUsage.objects.renew()
