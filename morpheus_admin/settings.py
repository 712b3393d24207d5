"""Settings: one file, every knob from the environment, SQLite and an embedded Redis by default."""

from datetime import timedelta
from pathlib import Path
import ipaddress
import os
import tempfile

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from morpheus_admin import envconf
from nodes.agent import transport

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(reader, *args, **kwargs):
    try:
        return reader(*args, **kwargs)
    except (envconf.ConfigError, transport.BrokerURLError) as exc:
        raise ImproperlyConfigured(str(exc)) from None


# "local" (the one-command run on a provider's own machine) or "production" (behind TLS, secrets from env).
MORPHEUS_ENV = os.environ.get("MORPHEUS_ENV", "local")
if MORPHEUS_ENV not in ("local", "production"):
    raise ImproperlyConfigured(f"MORPHEUS_ENV={MORPHEUS_ENV!r}: use 'local' or 'production'")
PRODUCTION = MORPHEUS_ENV == "production"
DEBUG = _env(envconf.env_bool, "DJANGO_DEBUG", not PRODUCTION)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when MORPHEUS_ENV=production")
    SECRET_KEY = "local-only-insecure-key-set-DJANGO_SECRET_KEY-in-production-0123456789"

ALLOWED_HOSTS = _env(envconf.env_list, "DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = _env(envconf.env_list, "DJANGO_CSRF_TRUSTED_ORIGINS", [])
DATA_DIR = Path(os.environ.get("MORPHEUS_DATA_DIR", BASE_DIR / "var"))
# Seals secrets at rest (Hub token, API keys, rig tokens); kept apart from SECRET_KEY (morpheus_admin/sealing.py).
SECRETS_KEY = os.environ.get("MORPHEUS_SECRETS_KEY", "")
SECRETS_KEY_FILE = Path(os.environ.get("MORPHEUS_SECRETS_KEY_FILE", DATA_DIR / "secrets.key"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_htmx",
    "template_partials",
    "ninja",  # installed so the API docs page serves its own Swagger UI files, not a CDN's
    "nodes",
    "models_catalog",
    "hosting",
    "marketplace",
    "metrics",
    "alerts",
    "api",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "nodes.middleware.NoRigKeyMiddleware",
    "accounts.middleware.SecondFactorMiddleware",
    "axes.middleware.AxesMiddleware",
    "audit.middleware.AuditRequestMiddleware",
]

if PRODUCTION:
    # Serves the collected, hashed static files; locally, runserver and the tests' live server serve them.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "morpheus_admin.urls"
WSGI_APPLICATION = "morpheus_admin.wsgi.application"

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
                "nodes.context_processors.roles",
            ],
        },
    },
]

_default_db = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL", _default_db), conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + IMMEDIATE: the web process reads while the panel worker writes, without "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Kept open like PostgreSQL's: a fresh SQLite connection re-reads the schema (~2 ms per panel-worker task).
    DATABASES["default"]["CONN_MAX_AGE"] = 60
    # A file, not memory, so the Celery workers started by the integration tests share the test DB.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("MORPHEUS_TEST_SQLITE", os.path.join(tempfile.gettempdir(), f"morpheus-test-{os.getpid()}.sqlite3"))
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# An operator login can run code on every rig: failed logins lock out a name from an address (django-axes),
# a TOTP code can be a second step (django-otp), and the riskiest actions ask for the password again.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = _env(envconf.env_int, "MORPHEUS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=_env(envconf.env_int, "MORPHEUS_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "code"]
OTP_TOTP_ISSUER = "Morpheus Admin"
REQUIRE_2FA_FOR_OPERATORS = _env(envconf.env_bool, "MORPHEUS_REQUIRE_2FA_FOR_OPERATORS", False)
REAUTH_MINUTES = _env(envconf.env_int, "MORPHEUS_REAUTH_MINUTES", 10, minimum=1)

# --- Audit log (audit/) ---------------------------------------------------------------------------------------
# The proxies in front of the panel (addresses or networks, e.g. "10.0.0.5,172.18.0.0/16"): only a request coming
# from one of them has its X-Forwarded-For believed, for the audit log's addresses and the login lockouts alike.
TRUSTED_PROXIES = _env(envconf.env_list, "MORPHEUS_TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"MORPHEUS_TRUSTED_PROXIES: {_proxy!r} is not an address or a network") from None
AXES_CLIENT_IP_CALLABLE = "audit.log.client_address"
AUDIT_PAGE_SIZE = _env(envconf.env_int, "MORPHEUS_AUDIT_PAGE_SIZE", 50, minimum=1, maximum=1000)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Production hardening: on by default in production, each one can be turned off (e.g. a TLS proxy redirects).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = _env(envconf.env_bool, "DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
SESSION_COOKIE_SECURE = _env(envconf.env_bool, "DJANGO_SECURE_COOKIES", PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = _env(envconf.env_int, "DJANGO_SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env(envconf.env_bool, "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = _env(envconf.env_bool, "DJANGO_SECURE_HSTS_PRELOAD", PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Celery: JSON only, late acks, one message at a time, explicit limits -------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# rediss://: the broker's certificate is verified (ssl_* URL parameters or MORPHEUS_BROKER_CA_FILE say how).
CELERY_BROKER_URL, CELERY_BROKER_USE_SSL = _env(transport.tls_settings, REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_TASK_DEFAULT_QUEUE = "panel"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup otherwise closes the DB connection around every task (a reconnect per agent report:
# ~12 ms on PostgreSQL); morpheus_admin/celery.py applies Django's own CONN_MAX_AGE rule instead.
CELERY_DB_REUSE_MAX = 1000
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

STATUS_CHECK_INTERVAL = _env(envconf.env_float, "MORPHEUS_STATUS_CHECK_INTERVAL", 10.0, minimum=0.2)
# Operations a rig never picked up (its queue message expired) are failed after this many seconds.
OPERATION_PICKUP_TIMEOUT = _env(envconf.env_int, "MORPHEUS_OPERATION_PICKUP_TIMEOUT", 120, minimum=1)
# Once picked up (the agent reports "running" on taking a message), an operation must end within its kind's run
# limit, in seconds; downloads have none (they resume and report progress). Loading a 70B model takes minutes.
RUN_TIMEOUTS = {
    "launch": _env(envconf.env_int, "MORPHEUS_LAUNCH_TIMEOUT", 1800, minimum=1),
    "build": _env(envconf.env_int, "MORPHEUS_BUILD_TIMEOUT", 3 * 3600, minimum=1),
    "other": _env(envconf.env_int, "MORPHEUS_RUN_TIMEOUT", 600, minimum=1),
}
# How often beat looks for such operations (tests shorten it to see the timeout without a 30 s wait).
OPERATION_EXPIRY_CHECK_INTERVAL = _env(envconf.env_float, "MORPHEUS_OPERATION_EXPIRY_CHECK_INTERVAL", 30.0, minimum=0.2)
TELEMETRY_RETENTION = timedelta(hours=_env(envconf.env_int, "MORPHEUS_TELEMETRY_RETENTION_HOURS", 24, minimum=1))
STATUS_CHANGE_RETENTION = timedelta(days=_env(envconf.env_int, "MORPHEUS_STATUS_RETENTION_DAYS", 90, minimum=1))
# This machine's rig when scripts/run started the panel: on a Redis 6.2 (limited mode) the only rig given an account.
LOCAL_RIG = os.environ.get("MORPHEUS_LOCAL_RIG", "")
# What the enrolment page prints as the broker URL a rig should use (the panel's own may be 127.0.0.1).
RIG_BROKER_URL = os.environ.get("MORPHEUS_RIG_BROKER_URL", REDIS_URL)

RECONCILE_INTERVAL = _env(envconf.env_float, "MORPHEUS_RECONCILE_INTERVAL", 60.0, minimum=1)
# A rig unheard of for this long has the messages waiting for it dropped, and its queued operations ended.
OFFLINE_DROP_AFTER = timedelta(hours=_env(envconf.env_float, "MORPHEUS_OFFLINE_DROP_AFTER_HOURS", 24.0, minimum=0.01))

# --- Alerts (alerts/): how often rules are evaluated, how often a failed notification is tried, and the mail
# server that email channels go through (Django's SMTP backend). PANEL_URL makes the links in messages absolute.
ALERT_CHECK_INTERVAL = _env(envconf.env_float, "MORPHEUS_ALERT_CHECK_INTERVAL", 15.0, minimum=0.2)
ALERT_NOTIFY_ATTEMPTS = _env(envconf.env_int, "MORPHEUS_ALERT_NOTIFY_ATTEMPTS", 5, minimum=1, maximum=100)
PANEL_URL = os.environ.get("MORPHEUS_PANEL_URL", "").rstrip("/")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = _env(envconf.env_int, "EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _env(envconf.env_bool, "EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _env(envconf.env_bool, "EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL: set one (STARTTLS on 587, or TLS from the start on 465)")
EMAIL_TIMEOUT = _env(envconf.env_int, "EMAIL_TIMEOUT", 5, minimum=1, maximum=60)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "morpheus-admin@localhost")

CELERY_BEAT_SCHEDULE = {
    "check-rig-status": {
        "task": "panel.check_node_status",
        "schedule": STATUS_CHECK_INTERVAL,
        "options": {"expires": max(STATUS_CHECK_INTERVAL, 5)},
    },
    "expire-stale-operations": {
        "task": "panel.expire_operations",
        "schedule": OPERATION_EXPIRY_CHECK_INTERVAL,
        "options": {"expires": max(OPERATION_EXPIRY_CHECK_INTERVAL, 5)},
    },
    "reconcile-deployments": {
        "task": "panel.reconcile_deployments",
        "schedule": RECONCILE_INTERVAL,
        "kwargs": {"interval": RECONCILE_INTERVAL},
        "options": {"expires": RECONCILE_INTERVAL},
    },
    "sync-broker-accounts": {
        "task": "panel.sync_broker_accounts",
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    "prune-telemetry": {
        "task": "panel.prune_history",
        "schedule": 3600.0,
        "options": {"expires": 3600},
    },
    "check-alerts": {
        "task": "panel.check_alerts",
        "schedule": ALERT_CHECK_INTERVAL,
        "options": {"expires": max(ALERT_CHECK_INTERVAL, 5)},
    },
    "drop-offline-messages": {
        "task": "panel.drop_offline_messages",
        "schedule": 600.0,
        "options": {"expires": 600},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("MORPHEUS_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Models: Hugging Face (or a mirror) ---------------------------------------------------------------
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
# Refuse a download when the rig's free space would drop under this margin.
DOWNLOAD_DISK_MARGIN = _env(envconf.env_int, "MORPHEUS_DOWNLOAD_DISK_MARGIN_MB", 1024, minimum=0) * 1024 * 1024

# --- JSON API (api/): requests a minute per token (all may come at once), and failed authentications a minute per
# address before that address is refused for a while; counted in the default cache (per process: api/ratelimit.py).
API_RATE = _env(envconf.env_int, "MORPHEUS_API_RATE", 120, minimum=1)
API_FAILED_AUTH_RATE = _env(envconf.env_int, "MORPHEUS_API_FAILED_AUTH_RATE", 20, minimum=1)

# --- Prometheus /metrics (metrics/): a bearer token, or client networks allowed without one; neither set: refused.
# Behind a reverse proxy on the same host every client arrives from the proxy's address: use the token there.
from metrics import access as metrics_access  # noqa: E402  (plain Python, no Django)

try:
    METRICS_TOKEN = metrics_access.parse_token(os.environ.get("MORPHEUS_METRICS_TOKEN", ""))
    METRICS_ALLOW = metrics_access.parse_networks(_env(envconf.env_list, "MORPHEUS_METRICS_ALLOW", []))
except metrics_access.AccessConfigError as exc:
    raise ImproperlyConfigured(str(exc)) from None
# A scraper inside the deployment (compose's Prometheus) speaks plain HTTP to web:8000; a redirect to https would not
# protect its token anyway, which goes with the first request.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
