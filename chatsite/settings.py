"""chatsite settings: everything that varies between machines comes from the environment.

See docs/deployment/settings.md for each variable.
"""

from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from chatsite.env import env_bool, env_choice, env_float, env_int, env_list, env_str, secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CHATSITE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = secret_key("SECRET_KEY", VAR_DIR / "secret_key")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "chatsite.admin_site.ChatsiteAdminConfig",  # django.contrib.admin, open to roles (admin_site.py)
    "django.contrib.auth",
    "axes",  # failed-login throttling (below)
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "conversations",  # before modelhub: its `finetune` command extends modelhub's (adds --snapshot)
    "modelhub",
]

MIDDLEWARE = [
    "conversations.metrics.count_responses",  # outermost: counts every response, redirects and errors included
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Connections are kept (DATABASE_CONN_MAX_AGE seconds, checked before reuse): opening one per
# query batch costs more than the query when many replies start at once.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Under ASGI every request and every database call of a consumer runs in a thread of its own, so a
    # connection kept by its thread is never used again nor closed: at 16 API calls at once PostgreSQL
    # ran out of connections ("too many clients"). Django's advice for ASGI: no persistent connections,
    # the backend's pool instead. psycopg's pool, per process: connections are handed back after each
    # request and each consumer's database call, and a call waits up to DATABASE_POOL_TIMEOUT seconds
    # for one when all DATABASE_POOL_SIZE are busy.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # CONN_HEALTH_CHECKS: the pool checks a connection it hands out
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DATABASE_POOL_SIZE", 10, minimum=1),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the page views read while a reply is being written; with WAL, synchronous=NORMAL
    # stays consistent after a crash of the app (only an OS crash can lose the last commits).
    # IMMEDIATE: a transaction takes the write lock when it begins, waiting up to `timeout` seconds
    # for it. A deferred one that reads and then writes cannot wait when another holds the lock
    # (SQLite would deadlock), so it fails at once with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "conversations:start"  # each role's home (conversations/access/permissions.py start)
LOGOUT_REDIRECT_URL = "login"

# --- Roles and logins (docs/admin/roles.md; conversations/access/roles.py, access/permissions.py) ------
# Groups a new account joins (the roles: user, reviewer, model admin, admin; or a site's own groups).
CHATSITE_NEW_USER_GROUPS = env_list("CHATSITE_NEW_USER_GROUPS", ["user"])
# Failed logins (django-axes): LOGIN_FAILURE_LIMIT failures for one username from one address lock that
# pair out for LOGIN_LOCKOUT_MINUTES (429 and a page saying when), counted in the database, so in every
# process; a successful login resets the count. Behind a proxy, run daphne with --proxy-headers so the
# address is the client's.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chatsite.lockout.locked_out"
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # pages pass the token in hx-headers / forms; no script reads the cookie
X_FRAME_OPTIONS = "DENY"

# --- Security headers (tests/site/test_security_headers.py) -------------------------
# Content-Security-Policy (django-csp 4): everything from this site only (the chat's websocket
# too: 'self' covers ws/wss to the same host); no inline script, inline style or eval anywhere:
# templates keep theirs in static/, and htmx is told neither to inject its indicator style nor
# to evaluate (templates/base.html). No plugins, <base> or framing; forms post here only.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
# No Referer header to other sites (links in answers); browsers take the Content-Type as given.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True

# Error reports show no API key in clear: not in the Authorization header (Django hides it by name) nor in a
# traceback's variables (this filter, by the key's look).
DEFAULT_EXCEPTION_REPORTER_FILTER = "chatsite.reporting.KeyRedactingFilter"

# --- Production profile (docs/deployment/production.md; tests/site/test_production_profile.py) ---------
# Off by default: the embedded default (`make run`) serves plain http on 127.0.0.1. With the documented
# environment, `manage.py check --deploy` reports nothing: HTTPS only, cookies sent over HTTPS only, and
# browsers told to stay on HTTPS. Plain-http requests are redirected, but for what the private network
# asks each process directly: a load balancer's probes and Prometheus's scrapes.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a proxy that ends TLS and sets X-Forwarded-Proto (and strips any the client sent), requests it
# received over HTTPS count as secure; never set it where clients reach daphne directly.
if env_bool("CHATSITE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Metrics and health checks (docs/reference/metrics.md; conversations/metrics.py, chatsite/health.py) ----
# /metrics answers staff users, and a scraper that sends "Authorization: Bearer <METRICS_TOKEN>" (empty:
# staff only). /healthz and /readyz answer anyone.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The HTTP client of remote models (openai's) logs every request at INFO: one line per reply.
    "loggers": {"httpx2": {"level": "WARNING"}, "openai": {"level": "WARNING"}},
}

# --- Chat -------------------------------------------------------------------
# Longest user message accepted over the websocket, in characters.
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 16000, minimum=1)
# Messages a conversation's page shows at first, its newest: older ones load a window at a time
# ("Show earlier messages"), so a long conversation's page costs what a short one's does.
CHAT_PAGE_MESSAGES = env_int("CHAT_PAGE_MESSAGES", 100, minimum=2)
# Replies one user may have being written at once, over all their conversations (a side-by-side
# comparison writes two): more are refused, so one user cannot take every seat of a batch. The default
# of the quota "replies at once" (Admin → Quotas per group and user; Admin → API keys per key).
CHAT_MAX_REPLIES_PER_USER = env_int("CHAT_MAX_REPLIES_PER_USER", 4, minimum=1)
# An API call at its limit of replies at once waits up to this many seconds for a place before it is
# answered 429 with Retry-After (benchmark and batch clients rarely retry); 0: refused at once.
CHAT_API_QUEUE_SECONDS = env_float("CHAT_API_QUEUE_SECONDS", 10.0, minimum=0)
# Quotas (conversations/access/quotas.py), the defaults that Admin → Quotas overrides per group and per user; 0: no
# limit. Tokens (prompt + completion) of one user's replies from midnight (TIME_ZONE), and replies asked for
# in any 60 seconds; over either, a turn or an API call is refused, saying when the count resets.
CHAT_TOKENS_PER_DAY = env_int("CHAT_TOKENS_PER_DAY", 0, minimum=0)
CHAT_REPLIES_PER_MINUTE = env_int("CHAT_REPLIES_PER_MINUTE", 0, minimum=0)
# The review queue (conversations/review/queue.py): decisions each feedback item needs (2 or more: overlap,
# and agreement is measured), and how long an assigned item stays its reviewer's before another may take it.
CHAT_REVIEWS_PER_ITEM = env_int("CHAT_REVIEWS_PER_ITEM", 1, minimum=1)
CHAT_REVIEW_ASSIGNMENT_MINUTES = env_float("CHAT_REVIEW_ASSIGNMENT_MINUTES", 30.0, minimum=1)
# Seconds a reply keeps generating after its last watcher left, in every process (a reload
# comes back within this time); then it is stopped and saved as "interrupted".
CHAT_ORPHAN_GRACE_SECONDS = env_float("CHAT_ORPHAN_GRACE_SECONDS", 15.0, minimum=0)
# Several server processes share one database (conversations/models/writers.py): each renews the
# heartbeat of the replies it writes every CHAT_HEARTBEAT_SECONDS, and a streaming reply whose
# writer is silent for CHAT_WRITER_TIMEOUT_SECONDS (or whose process on this host has exited)
# is saved as "interrupted" with the text last flushed, by whichever process notices.
CHAT_HEARTBEAT_SECONDS = env_float("CHAT_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
CHAT_WRITER_TIMEOUT_SECONDS = env_float("CHAT_WRITER_TIMEOUT_SECONDS", 30.0, minimum=0.5)
if CHAT_WRITER_TIMEOUT_SECONDS < 2 * CHAT_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("CHAT_WRITER_TIMEOUT_SECONDS must be at least twice CHAT_HEARTBEAT_SECONDS")
# A database that does not answer: a turn's save is tried again for CHAT_DB_RETRY_SECONDS (then
# the user is told, and their text goes back into the box); a reply's final save, whose text
# exists nowhere else, for CHAT_SAVE_RETRY_SECONDS.
CHAT_DB_RETRY_SECONDS = env_float("CHAT_DB_RETRY_SECONDS", 10.0, minimum=0)
CHAT_SAVE_RETRY_SECONDS = env_float("CHAT_SAVE_RETRY_SECONDS", 300.0, minimum=0)
# A channel layer (Redis) that does not answer: an open socket waits for it this many seconds
# (then it closes, and the page reconnects); once it answers, the page is caught up.
CHAT_LAYER_OUTAGE_SECONDS = env_float("CHAT_LAYER_OUTAGE_SECONDS", 30.0, minimum=0)
# On SIGTERM, replies being written are stopped and saved within this many seconds.
CHAT_SHUTDOWN_SECONDS = env_float("CHAT_SHUTDOWN_SECONDS", 10.0, minimum=0.5)
# Frames that reach the database (turns, stop, sync), per socket and per user in each process:
# so many a second on average, so many at once; past that a frame is refused (rate_limited).
CHAT_SOCKET_FRAMES_PER_SECOND = env_float("CHAT_SOCKET_FRAMES_PER_SECOND", 5.0, minimum=0.1)
CHAT_SOCKET_FRAMES_BURST = env_int("CHAT_SOCKET_FRAMES_BURST", 20, minimum=1)
CHAT_USER_FRAMES_PER_SECOND = env_float("CHAT_USER_FRAMES_PER_SECOND", 10.0, minimum=0.1)
CHAT_USER_FRAMES_BURST = env_int("CHAT_USER_FRAMES_BURST", 40, minimum=1)
# Least seconds between two chunk frames of one reply (the first chunk goes at once): each
# frame costs the server a few milliseconds of Python (channel layer, JSON, websocket), so
# tokens are coalesced to ~20 frames per second; 0 sends every token as its own frame.
CHAT_STREAM_INTERVAL_SECONDS = env_float("CHAT_STREAM_INTERVAL_SECONDS", 0.05, minimum=0)
# Seconds between saves of a streaming reply's partial text.
CHAT_FLUSH_SECONDS = env_float("CHAT_FLUSH_SECONDS", 2.0, minimum=0.1)
# Where feedback exports (dataset snapshots: train/eval JSONL and a card) are written.
CHAT_DATASETS_DIR = Path(env_str("CHAT_DATASETS_DIR", str(VAR_DIR / "datasets")))
# Evaluation reports (manage.py evaluate, the admin): at most this many held-out rows each, and the
# paired bootstrap's resamples (every metric recomputed per resample, for each candidate).
EVALUATION_MAX_ROWS = env_int("EVALUATION_MAX_ROWS", 200, minimum=1)
EVALUATION_RESAMPLES = env_int("EVALUATION_RESAMPLES", 1000, minimum=0)
# Answers of an evaluation are at most this long (or the base model's own limit, if lower).
EVALUATION_MAX_NEW_TOKENS = env_int("EVALUATION_MAX_NEW_TOKENS", 128, minimum=1)
# A fine-tune on a snapshot ends with a report of the base vs the new adapter on its held-out rows.
EVALUATION_AFTER_FINETUNE = env_bool("EVALUATION_AFTER_FINETUNE", True)

# --- modelhub ---------------------------------------------------------------
# Device for models whose own device is "auto": auto picks a CUDA GPU when there is one.
MODELHUB_DEVICE = env_choice("MODELHUB_DEVICE", "auto", ["auto", "cpu", "cuda", "mps"])
MODELHUB_DEFAULT_MODEL = env_str("MODELHUB_DEFAULT_MODEL", "")
MODELHUB_MAX_NEW_TOKENS_LIMIT = env_int("MODELHUB_MAX_NEW_TOKENS_LIMIT", 2048, minimum=1)
# CPU threads torch may use for generation (0: torch's default, one per core).
MODELHUB_TORCH_THREADS = env_int("MODELHUB_TORCH_THREADS", 0, minimum=0)
# Memory budget: how many models may be loaded at once, and how many GB of weights
# (0: no limit); past either, the least recently used idle model is unloaded.
MODELHUB_MAX_LOADED_MODELS = env_int("MODELHUB_MAX_LOADED_MODELS", 2, minimum=1)
MODELHUB_MAX_MEMORY_GB = env_float("MODELHUB_MAX_MEMORY_GB", 0.0, minimum=0)
# Load the default model (and those marked "load at start") in the background when the server
# starts (chatsite/asgi.py), so the first reply does not wait for the load; off: on first use.
MODELHUB_PRELOAD = env_bool("MODELHUB_PRELOAD", True)
# Unload a model that served nothing for this many seconds (0: never).
MODELHUB_IDLE_UNLOAD_SECONDS = env_float("MODELHUB_IDLE_UNLOAD_SECONDS", 3600.0, minimum=0)
MODELHUB_BUILTIN_DIR = BASE_DIR / "modelhub" / "builtin"
# Where fine-tuned LoRA adapters are saved (one folder per base model and adapter name).
MODELHUB_ADAPTERS_DIR = Path(env_str("MODELHUB_ADAPTERS_DIR", str(VAR_DIR / "adapters")))
# Serving: at most this many replies decode together on one model (more wait in its queue);
# prompts are prefilled this many tokens at a time, between decode steps of the others;
# keys and values of finished replies are kept (LRU) within this many MiB per model, so
# the next turn of a conversation does not re-read its history (0: off).
MODELHUB_MAX_BATCH = env_int("MODELHUB_MAX_BATCH", 16, minimum=1)
MODELHUB_PREFILL_CHUNK = env_int("MODELHUB_PREFILL_CHUNK", 512, minimum=16)
MODELHUB_KV_CACHE_MB = env_float("MODELHUB_KV_CACHE_MB", 512.0, minimum=0)
# While a chat turn is being saved, running replies wait up to this many seconds per decode
# step for its request, and prompts already queued wait as long to be prefilled with it:
# it starts at once, and turns sent together start together; 0: off.
MODELHUB_ARRIVAL_HOLD_SECONDS = env_float("MODELHUB_ARRIVAL_HOLD_SECONDS", 0.1, minimum=0)
# The attention view (modelhub/backends/attention.py) recomputes one pass over a reply with its attention
# weights, layers × heads × tokens² floats: at most this many tokens, and this many MiB of weights.
MODELHUB_ATTENTION_MAX_TOKENS = env_int("MODELHUB_ATTENTION_MAX_TOKENS", 1024, minimum=2)
MODELHUB_ATTENTION_MAX_MB = env_float("MODELHUB_ATTENTION_MAX_MB", 512.0, minimum=1)
# Model worker processes (`manage.py modelhub_worker`): with MODELHUB_WORKERS on, web processes
# load no model and hand every chat reply to a worker over the channel layer (Redis); a reply
# no worker takes within MODELHUB_WORKER_TIMEOUT_SECONDS fails with a message saying so.
MODELHUB_WORKERS = env_bool("MODELHUB_WORKERS", False)
MODELHUB_WORKER_TIMEOUT_SECONDS = env_float("MODELHUB_WORKER_TIMEOUT_SECONDS", 10.0, minimum=0.5)
# A model worker serves its own metrics on this port (manage.py modelhub_worker --metrics-port; 0: none).
MODELHUB_WORKER_METRICS_PORT = env_int("MODELHUB_WORKER_METRICS_PORT", 0, minimum=0)
if MODELHUB_WORKERS and not REDIS_URL:
    raise ImproperlyConfigured("MODELHUB_WORKERS needs REDIS_URL: web and worker processes talk over Redis")
