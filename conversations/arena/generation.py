"""An arena's answers are written in the background: one daemon thread per arena, started once
its rows are committed, running `Arena.generate` (a match at a time; see conversations/models/arena.py)."""

import threading

from django.db import connections, transaction

from conversations.models import Arena


def start_generation(arena):
    """Generate the arena's answers in a daemon thread, once the arena's rows are committed."""
    def run():
        try:
            Arena.objects.select_related("base", "candidate", "opponent").get(pk=arena.pk).generate()
        finally:
            connections.close_all()  # this thread's own database connection

    transaction.on_commit(lambda: threading.Thread(target=run, name=f"arena-{arena.pk}", daemon=True).start())
