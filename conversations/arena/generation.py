"""An arena's answers are written in the background, once its rows are committed, by `Arena.generate`
(a match at a time; see conversations/models/arena.py): in a daemon thread of this process, or, with
model workers on (MODELHUB_WORKERS), by a worker serving the arena's base model, which takes the
answer rows over as their writer first (`take_over`, conversations/model_worker.py)."""

import threading
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections, transaction

from conversations.models import Arena, ArenaMatch, Message, writers
from modelhub.api import model_channel


def start_generation(arena):
    """Have the arena's answers written, once the arena's rows are committed."""
    if settings.MODELHUB_WORKERS:
        transaction.on_commit(lambda: _offer(arena))
        return
    transaction.on_commit(
        lambda: threading.Thread(target=run, args=(arena.pk,), name=f"arena-{arena.pk}", daemon=True).start()
    )


def run(arena_id):
    """Write the arena's answers here (blocking: a thread's work)."""
    try:
        Arena.objects.select_related("base", "candidate", "opponent").get(pk=arena_id).generate()
    finally:
        connections.close_all()  # this thread's own database connection


def _offer(arena):
    """Offer the arena to the workers of its base model. Unless one takes it, its answers' heartbeats
    stop and the web processes end them `interrupted` within CHAT_WRITER_TIMEOUT_SECONDS (the arena settles)."""
    async_to_sync(get_channel_layer().send)(
        model_channel(arena.base.name),
        {
            "type": "arena.generate",
            "arena_id": arena.pk,
            "writer": writers.identity(),
            "deadline": time.time() + settings.MODELHUB_WORKER_TIMEOUT_SECONDS,
        },
    )


def take_over(arena_id, offered_by):
    """Become the writer of the arena's answers still offered by that process; False if none are."""
    matches = ArenaMatch.objects.filter(arena_id=arena_id)
    ids = [pk for pair in matches.values_list("candidate_answer", "opponent_answer") for pk in pair]
    answers = Message.objects.filter(pk__in=ids, status=Message.Status.STREAMING, writer=offered_by)
    return answers.update(writer=writers.identity()) > 0
