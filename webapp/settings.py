"""palmloop settings: one file, every value from the environment, zero-setup defaults.

With no environment at all the app runs on SQLite under ``var/`` and Celery uses kombu's
filesystem transport under ``var/celery`` (a separate worker process, no server to install).
``DATABASE_URL=postgres://...`` and ``REDIS_URL=redis://...`` switch to the real services.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=True)


def _dev_secret_key() -> str:
    """A key generated once into var/ so development sessions survive restarts."""
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _dev_secret_key()
else:
    # Required in production: a missing key is an ImproperlyConfigured error at start-up.
    SECRET_KEY = env.str("SECRET_KEY")

ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials.apps.SimpleAppConfig",
    "django_celery_beat",
    "axes",
    "csp",
    "webapp",
    "feedback",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last but for the next one, as django-axes asks: it turns a lockout into its response.
    "axes.middleware.AxesMiddleware",
    # Last: runs the chain above in one thread instead of a thread trip per middleware (it
    # only passes requests on).
    "webapp.middleware.OneThreadMiddlewareChain",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "feedback.context_processors.roles",
                "webapp.context_processors.site",
            ],
            "builtins": ["template_partials.templatetags.partials"],
            # Compiled templates are cached (Django's default, which listing loaders turns
            # off): parsing them again took 40% of a chat send. The app runs without a
            # reloader, so a changed template shows after a restart.
            "loaders": [
                (
                    "template_partials.loader.Loader",
                    [
                        (
                            "django.template.loaders.cached.Loader",
                            [
                                "django.template.loaders.filesystem.Loader",
                                "django.template.loaders.app_directories.Loader",
                            ],
                        )
                    ],
                )
            ],
        },
    }
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'palmloop.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool of connections shared by the process's threads. Under ASGI every request runs its
    # sync code on a thread of its own, so a persistent connection (CONN_MAX_AGE), which belongs
    # to one thread, was never reused: each request opened one (a quarter of a chat send's
    # time) and left it to the garbage collector. Each connection is checked before it is lent;
    # after a database restart the pool waits 1 s, then 2, before it tries the next idle one,
    # so idle connections beyond two are closed after a minute (max_idle).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # connections go back to the pool
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=5),
            "pool": {
                "min_size": env.int("DATABASE_POOL_MIN", default=2),
                "max_size": env.int("DATABASE_POOL_MAX", default=40),
                "timeout": env.float("DATABASE_POOL_TIMEOUT_S", default=10.0),
                "max_idle": env.float("DATABASE_POOL_MAX_IDLE_S", default=60.0),
            },
        }
    )
else:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # Readers never wait for the writer; a commit is not an fsync (durable at checkpoints).
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests get a file too, not Django's shared in-memory database: that one locks whole
    # tables, so a page read while an answer's run saves fails at once instead of reading in
    # WAL mode as the real file does.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-palmloop.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, cache -------------------------------------------------------------------
REDIS_URL: str = env.str("REDIS_URL", default="")
CELERY_DATA_DIR = VAR_DIR / "celery"

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 6 * 3600}
    CACHES = {
        "default": {
            "BACKEND": "webapp.redis_pool.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            # One pool for the process: each request's thread gets its own cache object, which
            # would otherwise open a connection of its own; and one client on it (Django makes
            # one per operation, which cost more CPU than the command). A Redis that does not
            # answer fails an operation within seconds instead of holding the request (the chat
            # carries on without the cache: feedback/services/shared_cache.py).
            "OPTIONS": {
                "pool_class": "webapp.redis_pool.SharedConnectionPool",
                "socket_connect_timeout": 2,
                "socket_timeout": 2,
            },
        }
    }
else:
    for sub in ("queue", "processed", "results", "control"):
        (CELERY_DATA_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_RESULT_BACKEND = f"file://{CELERY_DATA_DIR / 'results'}"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(CELERY_DATA_DIR / "control"),
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"feedback.tasks.training.*": {"queue": "training"}}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = timedelta(days=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# Imported into django-celery-beat's tables on start; editable in the admin from then on.
CELERY_BEAT_SCHEDULE = {
    "clear-expired-sessions": {
        "task": "feedback.tasks.clear_expired_sessions",
        "schedule": timedelta(hours=6),
    },
    "sweep-open-answers": {
        "task": "feedback.tasks.sweep_open_answers",
        "schedule": timedelta(minutes=1),
    },
}

# --- Auth -----------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=True)

# Brute-force protection: lock a username+address pair after N failures, for a fixed cool-off.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_USERNAME_CALLABLE = "webapp.lockout.lockout_username"
# Accounts one address may create in an hour (each has its own send limit); the password-change
# form refuses the current password after AXES_FAILURE_LIMIT wrong ones, for the cool-off.
SIGNUPS_PER_HOUR = env.int("SIGNUPS_PER_HOUR", default=10)
# The address counted is REMOTE_ADDR, here and in the rate limits. Behind a reverse proxy that is
# the client's only when uvicorn believes the proxy's X-Forwarded-For: it does for connections
# from FORWARDED_ALLOW_IPS (uvicorn's setting, default 127.0.0.1; see the README). Otherwise every
# client would share the proxy's address, and anyone could lock anyone out.

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
CSRF_FAILURE_VIEW = "webapp.csrf.csrf_failure"  # htmx requests: a notice on the page
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading binds the whole domain to HTTPS for months in every browser: an operator's
        # decision about their domain, not an application default, so its reminder is silenced.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    if env.bool("BEHIND_TLS_PROXY", default=True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Strict CSP: scripts, styles and connections from our own origin only; no inline code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- i18n -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Models and inference -------------------------------------------------------------------
MODEL_DIR = Path(env.str("MODEL_DIR", default=str(BASE_DIR / "models")))
TORCH_DEVICE: str = env.str("TORCH_DEVICE", default="cpu")
# The policy served in this process when no INFERENCE_URL is set.
POLICY_DIR = Path(env.str("POLICY_DIR", default=str(MODEL_DIR / "base")))
# An OpenAI-compatible engine (python -m model_runtime serve) to use instead of the in-process one.
INFERENCE_URL: str = env.str("INFERENCE_URL", default="")
INFERENCE_API_KEY: str = env.str("INFERENCE_API_KEY", default="")
INFERENCE_TIMEOUT_S = env.float("INFERENCE_TIMEOUT_S", default=120.0)
INFERENCE_CONTEXT_LENGTH = env.int("INFERENCE_CONTEXT_LENGTH", default=512)
ENGINE_MAX_BATCH = env.int("ENGINE_MAX_BATCH", default=16)
ENGINE_MAX_QUEUE = env.int("ENGINE_MAX_QUEUE", default=64)
# The web process's own engine (no INFERENCE_URL) runs in a child process: beside the web's threads
# it would wait for Python's GIL at every operation (model_runtime/engine/process.py).
ENGINE_PROCESS: bool = env.bool("ENGINE_PROCESS", default=True)

# Answer streams: how often progress is saved and the stop flag read, and how long an answer
# keeps being written after its page went away (a reconnect within that time picks it up).
STREAM_FLUSH_S = env.float("STREAM_FLUSH_S", default=0.5)
STREAM_STOP_CHECK_S = env.float("STREAM_STOP_CHECK_S", default=0.25)
STREAM_RECONNECT_GRACE_S = env.float("STREAM_RECONNECT_GRACE_S", default=15.0)
# Start writing an answer when it is sent, not when its page opens the stream (one web process
# runs it; a stream served by another process follows it through Redis, or the database).
CHAT_START_ON_SEND = env.bool("CHAT_START_ON_SEND", default=True)
# A send's response waits up to this long for its answer's first words and carries them, so the
# page need not open the stream first (when the model is busy it answers without them).
CHAT_SEND_WAITS_FOR_ANSWER_S = env.float("CHAT_SEND_WAITS_FOR_ANSWER_S", default=0.25)
# An open answer with no progress for this long was left by a process that died.
STALE_ANSWER_S = env.float("STALE_ANSWER_S", default=120.0)

SITE_NAME = "palmloop"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
