"""What load balancers, orchestrators and Prometheus ask a web process: /healthz, /readyz, /metrics.

/healthz says the process answers at all (no database). /readyz says it can serve a chat: the
database answers a `SELECT 1`, the channel layer carries a message there and back, and the default
model is loaded or loadable (modelhub.api.check_default: never a load). Each check has
PROBE_SECONDS; they run side by side, so a probe answers within about that, 503 naming the checks
that failed. Both are GET only and open to anyone (no login, no CSRF), and their body names no
host, address or error text: those go to the log.

/metrics (conversations/metrics.py) answers staff users and a scraper with the METRICS_TOKEN bearer
token; anyone else, anonymous included, gets 403 (a scraper cannot follow a login redirect).
All three are asked of each process directly, so none is redirected to HTTPS (SECURE_REDIRECT_EXEMPT).
"""

import asyncio
import hmac
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.http import require_GET

from conversations import metrics
from modelhub import api
from modelhub.api import ModelhubError

log = logging.getLogger(__name__)

PROBE_SECONDS = 2.0
# The database and model checks block: they run here, so that a database that hangs holds these
# threads (and fails the probes meanwhile), never the event loop's or Django's own.
_probe_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@login_not_required
@require_GET
def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


@login_not_required
@require_GET
async def readyz(request):
    checks = {
        "database": _in_thread(check_database),
        "channel_layer": check_channel_layer(),
        "default_model": _in_thread(check_default_model),
    }
    outcomes = await asyncio.gather(*(_within(name, check) for name, check in checks.items()))
    results = dict(zip(checks, outcomes))
    failing = [name for name, outcome in results.items() if outcome != "ok"]
    return JsonResponse({"ready": not failing, "failing": failing, "checks": results}, status=503 if failing else 200)


@login_not_required
@require_GET
def metrics_view(request):
    if not (request.user.is_staff or _has_metrics_token(request)):
        return HttpResponseForbidden("staff or the metrics token only\n", content_type="text/plain")
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def check_database():
    """A `SELECT 1` on a connection of its own, closed after: can a connection be had now? Not one of the
    pool's (PostgreSQL's, settings.py): a pooled connection would say nothing of a new one."""
    entry = connections.settings[DEFAULT_DB_ALIAS]
    own = {**entry, "OPTIONS": {key: value for key, value in entry.get("OPTIONS", {}).items() if key != "pool"}}
    connection = load_backend(own["ENGINE"]).DatabaseWrapper(own, DEFAULT_DB_ALIAS)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


def check_default_model():
    """The default model is loaded, or a load would find what it needs (never a load)."""
    try:
        api.check_default(PROBE_SECONDS)
    finally:
        connections.close_all()  # a probe thread keeps no connection: it would outlive a database restart


async def check_channel_layer():
    """A message sent to a fresh channel of the process's channel layer, and received back.

    A plain channel name (not `new_channel()`'s process-local kind): receiving on it shares no lock
    or buffer with the process's other receives, so a timed-out probe costs them nothing."""
    layer = get_channel_layer()
    channel = f"readyz.{secrets.token_hex(8)}"
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "readyz.ping":
        raise RuntimeError(f"the channel layer gave back {message!r}")


async def _within(name, check):
    """ "ok", or why not in a word (the exception's code or class; the whole message goes to the log)."""
    try:
        await asyncio.wait_for(check, PROBE_SECONDS)
    except TimeoutError:
        log.warning("readiness: %s did not answer within %gs", name, PROBE_SECONDS)
        return f"failing: no answer within {PROBE_SECONDS:g}s"
    except Exception as exc:
        log.warning("readiness: %s failed: %s", name, exc)
        return f"failing: {exc.code if isinstance(exc, ModelhubError) else type(exc).__name__}"
    return "ok"


def _in_thread(function, *args):
    return asyncio.get_running_loop().run_in_executor(_probe_threads, function, *args)


def _has_metrics_token(request):
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
