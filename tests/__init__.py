"""chatsite's tests, in folders named after what they test (chat/, access/, modelhub/engine/, …).

Shared fixtures live in the conftest.py of the nearest folder that holds every test using them;
shared helpers are plain modules (sockets.py, factories.py, …), never another test module.
Tests that start servers of their own (daphne, redis-server, a PostgreSQL database, a browser)
are marked `live` (tests/live.py has the servers)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: manage.py, templates/, requirements.txt
