"""Settings: the only place in the project that reads the environment.

`Settings.from_env()` parses and validates every variable once; everything else
receives a `Settings` (or the pieces it needs) as an argument. Tools that need less read
less: `QueueSettings` (a producer: Redis and the queue key) and `DatabaseSettings`
(Postgres alone). `VARIABLES` says what each variable means, for help texts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from coclib.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.clashofclans.com/v1"
DEFAULT_QUEUE_KEY = "{coc:refresh}:queue"
DEFAULT_REQS_PER_SEC = 10.0
MAX_REQS_PER_SEC = 30.0
# A scheduled run lingers this long with both lanes empty: the schedule's period (rate(2
# minutes)), so one drainer is always there and a request is picked up within about a second.
# README, "Linger", has what it costs and buys; 0 returns at once, as the seed did.
DEFAULT_LINGER_SECONDS = 120.0
MAX_LINGER_SECONDS = 900.0  # Lambda's longest timeout: a run never lingers past its deadline anyway
ENVIRONMENTS = ("production", "staging", "development")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# URL query options that would switch certificate verification off: refused, not honoured.
_UNVERIFIED_TLS = re.compile(
    r"(?i)(?:^|&)(ssl_cert_reqs=(none|optional)|ssl_check_hostname=(false|no|0))(?:&|$)"
)

# Every variable and its meaning with its default, for `--help`; each settings class names
# the ones it reads in `VARIABLES`.
VARIABLES = {
    "DATABASE_URL": "libpq URI of Postgres (required)",
    "REDIS_URL": "redis://, rediss:// or unix:// URL of Redis, any node of a cluster (required)",
    "REDIS_CLUSTER": "true or false: whether Redis is a cluster (default: asked of the server)",
    "SSL_CERT_FILE": "with rediss://: a CA bundle to trust besides the system's",
    "REFRESH_QUEUE_KEY": f"the queue's Redis key, any name (default {DEFAULT_QUEUE_KEY})",
    "COC_API_TOKENS": "comma-separated static API tokens (or COC_EMAIL and COC_PASSWORD)",
    "COC_EMAIL": "developer-portal login, with COC_PASSWORD (or COC_API_TOKENS)",
    "COC_PASSWORD": "developer-portal password, with COC_EMAIL",
    "COC_API_BASE_URL": f"the API's address (default {DEFAULT_API_BASE_URL})",
    "COC_REQS_PER_SEC": (
        f"API requests per second (default {DEFAULT_REQS_PER_SEC:g}, at most {MAX_REQS_PER_SEC:g})"
    ),
    "ENVIRONMENT": f"{', '.join(ENVIRONMENTS)} (default development)",
    "LOG_LEVEL": "log level (default INFO)",
    "LEDGER_RETENTION_DAYS": "drop ledger partitions older than this many days (default: keep all)",
    "DRAIN_LINGER_SECONDS": (
        f"a scheduled run with both lanes empty waits this long for new requests "
        f"(default {DEFAULT_LINGER_SECONDS:g}; 0: return at once)"
    ),
}


def mask_url_password(url: str) -> str:
    """The URL with any password replaced by `***`, safe for a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Validated configuration. `repr` masks every secret."""

    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    coc_email: str | None = None
    coc_password: str | None = field(default=None, repr=False)
    coc_api_tokens: tuple[str, ...] = field(default=(), repr=False)
    coc_api_base_url: str = DEFAULT_API_BASE_URL
    coc_reqs_per_sec: float = DEFAULT_REQS_PER_SEC
    environment: str = "development"
    log_level: str = "INFO"
    refresh_queue_key: str = DEFAULT_QUEUE_KEY
    ledger_retention_days: int | None = None
    redis_cluster: bool | None = None  # None: detected when connecting
    ssl_cert_file: str | None = None  # CA bundle for rediss:// (the standard SSL_CERT_FILE)
    drain_linger_seconds: float = DEFAULT_LINGER_SECONDS

    VARIABLES: ClassVar[tuple[str, ...]] = tuple(VARIABLES)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, resolve: SecretResolver | None = None
    ) -> Settings:
        """Read and validate every variable; raise `ConfigError` naming the first bad one.

        A secret setting may be given by reference instead (`DATABASE_URL_SECRET_ARN`,
        `COC_PASSWORD_PARAMETER`, ...: see `secret_references`); `resolve` reads the values
        (`coclib.aws_secrets.resolve_references` in Lambda). Without a resolver, a reference is
        a configuration error: plain values are the local way.
        """
        env = os.environ if environ is None else environ
        return _from_values_or_references(env, SECRET_SETTINGS, resolve, cls._from_values)

    @classmethod
    def _from_values(cls, env: Mapping[str, str]) -> Settings:
        """Validate plain values (from the environment, or resolved from references)."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        database_url = database_url_from_env(env)
        queue = QueueSettings._from_values(env)

        email, password = get("COC_EMAIL"), get("COC_PASSWORD")
        if (email is None) != (password is None):
            missing = "COC_PASSWORD" if password is None else "COC_EMAIL"
            raise ConfigError(missing, "COC_EMAIL and COC_PASSWORD must be set together")
        tokens = tuple(t.strip() for t in (get("COC_API_TOKENS") or "").split(",") if t.strip())

        base_url = (get("COC_API_BASE_URL") or DEFAULT_API_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("COC_API_BASE_URL", "expected an http:// or https:// URL")

        environment = (get("ENVIRONMENT") or "development").lower()
        if environment not in ENVIRONMENTS:
            raise ConfigError("ENVIRONMENT", f"expected one of {', '.join(ENVIRONMENTS)}")
        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"expected one of {', '.join(LOG_LEVELS)}")

        retention = get("LEDGER_RETENTION_DAYS")
        if retention is not None and (not retention.isdigit() or int(retention) < 1):
            raise ConfigError("LEDGER_RETENTION_DAYS", "must be a whole number of days, 1 or more")

        return cls(
            database_url=database_url,
            redis_url=queue.redis_url,
            coc_email=email,
            coc_password=password,
            coc_api_tokens=tokens,
            coc_api_base_url=base_url,
            coc_reqs_per_sec=parse_rate(get("COC_REQS_PER_SEC")),
            environment=environment,
            log_level=log_level,
            refresh_queue_key=queue.refresh_queue_key,
            ledger_retention_days=int(retention) if retention else None,
            redis_cluster=queue.redis_cluster,
            ssl_cert_file=queue.ssl_cert_file,
            drain_linger_seconds=parse_linger(get("DRAIN_LINGER_SECONDS")),
        )

    @property
    def has_credentials(self) -> bool:
        """Whether either credential form (email and password, or tokens) is set."""
        return bool(self.coc_api_tokens) or self.coc_email is not None

    def require_credentials(self) -> None:
        """Raise `ConfigError` unless a drain can log in to the API."""
        if not self.has_credentials:
            raise ConfigError(
                "COC_API_TOKENS",
                "set COC_API_TOKENS, or COC_EMAIL and COC_PASSWORD, to call the CoC API",
            )

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for log redaction."""
        found = [self.coc_password, *self.coc_api_tokens]
        for url in (self.database_url, self.redis_url):
            try:
                found.append(urlsplit(url).password)
            except ValueError:
                continue
        with contextlib.suppress(psycopg.ProgrammingError):  # a key=value conninfo string
            found.append(conninfo_to_dict(self.database_url).get("password"))
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("database_url", "redis_url"):
                value = mask_url_password(value)
            elif f.name == "coc_password":
                value = "***" if value else None
            elif f.name == "coc_api_tokens":
                value = f"<{len(value)} token(s)>"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__


@dataclass(frozen=True)
class QueueSettings:
    """What a producer needs and nothing more (`python -m worker enqueue`): Redis and the queue key."""

    redis_url: str = field(repr=False)
    refresh_queue_key: str = DEFAULT_QUEUE_KEY
    redis_cluster: bool | None = None  # None: detected when connecting
    ssl_cert_file: str | None = None  # CA bundle for rediss:// (the standard SSL_CERT_FILE)

    VARIABLES: ClassVar[tuple[str, ...]] = (
        "REDIS_URL",
        "REDIS_CLUSTER",
        "SSL_CERT_FILE",
        "REFRESH_QUEUE_KEY",
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, resolve: SecretResolver | None = None
    ) -> QueueSettings:
        """Read and validate the Redis variables and `REFRESH_QUEUE_KEY` alone.

        `REDIS_URL` may be given by reference, read by `resolve`, as in `Settings.from_env`.
        """
        env = os.environ if environ is None else environ
        return _from_values_or_references(env, ("REDIS_URL",), resolve, cls._from_values)

    @classmethod
    def _from_values(cls, env: Mapping[str, str]) -> QueueSettings:
        """Validate plain values (from the environment, or resolved from references)."""

        def get(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        redis_url = get("REDIS_URL")
        if redis_url is None:
            raise ConfigError("REDIS_URL", "is required but not set")
        redis_cluster = _parse_bool("REDIS_CLUSTER", get("REDIS_CLUSTER"))
        check_redis_url(redis_url, cluster=redis_cluster)
        ssl_cert_file = get("SSL_CERT_FILE") if redis_url.startswith("rediss://") else None
        if ssl_cert_file is not None and not os.path.isfile(ssl_cert_file):
            raise ConfigError("SSL_CERT_FILE", f"names {ssl_cert_file!r}, which is not a readable file")
        # Any key is accepted: coclib.keys puts the derived keys in its slot, tag or no tag.
        queue_key = get("REFRESH_QUEUE_KEY") or DEFAULT_QUEUE_KEY
        return cls(redis_url, queue_key, redis_cluster, ssl_cert_file)

    def secrets(self) -> tuple[str, ...]:
        """The Redis password, if the URL has one, for redaction."""
        return _url_password(self.redis_url)


def redis_db(url: str) -> int:
    """The database number a Redis URL names (`?db=N`, else a `/N` path on redis://); 0 if none."""
    parts = urlsplit(url)
    in_query = [q.split("=", 1)[1] for q in parts.query.split("&") if q.startswith("db=")]
    in_path = "" if parts.scheme == "unix" else parts.path.lstrip("/")
    raw = in_query[-1] if in_query else in_path
    if not raw:
        return 0
    if not raw.isdigit():
        raise ConfigError("REDIS_URL", f"the database must be a number, got {raw!r}")
    return int(raw)


def check_redis_url(url: str, *, cluster: bool | None) -> None:
    """Refuse a REDIS_URL the worker cannot use, with one message naming the variable.

    Checked here: the scheme, a host and port that parse, the database number, TLS options
    that would turn certificate verification off, and (when REDIS_CLUSTER=true says so
    up front) what a cluster cannot have: a database other than 0, or a unix socket.
    """
    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError("REDIS_URL", "expected a redis://, rediss:// or unix:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ConfigError("REDIS_URL", f"does not parse as a URL ({exc})") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("REDIS_URL", f"has no host: {mask_url_password(url)}")
    db = redis_db(url)
    if _UNVERIFIED_TLS.search(parts.query):
        raise ConfigError(
            "REDIS_URL",
            "TLS certificates are always verified; remove ssl_cert_reqs / ssl_check_hostname "
            "and name a CA bundle with SSL_CERT_FILE if the server's CA is not a public one",
        )
    if cluster:
        if parts.scheme == "unix":
            raise ConfigError(
                "REDIS_URL", "a Redis Cluster is reached over redis:// or rediss://, not unix://"
            )
        if db != 0:
            raise ConfigError("REDIS_URL", cluster_db_problem(db))


def cluster_db_problem(db: int) -> str:
    """Why `/N` is refused on a cluster (shared by the settings and the connect-time check)."""
    return (
        f"names database {db}, but a Redis Cluster has only database 0 (no SELECT): "
        f"take the database (/{db}) out of the URL"
    )


def _parse_bool(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        raise ConfigError(name, f"expected true or false, got {raw!r}")
    return value


@dataclass(frozen=True)
class DatabaseSettings:
    """Postgres alone (`python -m worker migrate`, `python -m ledger`)."""

    database_url: str = field(repr=False)

    VARIABLES: ClassVar[tuple[str, ...]] = ("DATABASE_URL",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        """Read and validate `DATABASE_URL` alone (a reference to it is refused, saying so)."""
        env = os.environ if environ is None else environ
        return _from_values_or_references(
            env, ("DATABASE_URL",), None, lambda values: cls(database_url=database_url_from_env(values))
        )

    def secrets(self) -> tuple[str, ...]:
        """The password in `DATABASE_URL`, as a URI or a key=value string, for redaction."""
        found = list(_url_password(self.database_url))
        with contextlib.suppress(psycopg.ProgrammingError):  # not a key=value string either
            found.append(conninfo_to_dict(self.database_url).get("password"))
        return tuple(s for s in found if s)


def _url_password(url: str) -> tuple[str, ...]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password,) if password else ()


def project_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The project's variables (`VARIABLES`) that are set and not blank, as a new dict.

    For a tool that fills in what is missing and then parses it with `Settings.from_env` (the
    demo supplies embedded services and the simulator).
    """
    env = os.environ if environ is None else environ
    return {name: env[name] for name in VARIABLES if (env.get(name) or "").strip()}


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Only `DATABASE_URL`, validated: for tools that need Postgres alone (`python -m ledger`)."""
    env = os.environ if environ is None else environ
    value = (env.get("DATABASE_URL") or "").strip()
    if not value:
        raise ConfigError("DATABASE_URL", "is required but not set")
    if not value.startswith(("postgres://", "postgresql://")) and "=" not in value:
        raise ConfigError("DATABASE_URL", "expected a libpq URI (postgresql://…)")
    return value


# Settings that may be given by reference to AWS Secrets Manager or SSM Parameter Store: set
# NAME_SECRET_ARN (a secret's ARN) or NAME_PARAMETER (a SecureString parameter's name or ARN)
# instead of NAME. The secret's text is exactly what NAME would hold.
SECRET_SETTINGS = ("DATABASE_URL", "REDIS_URL", "COC_PASSWORD", "COC_API_TOKENS")
SECRETS_MANAGER = "secretsmanager"
PARAMETER_STORE = "ssm"
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):\d{12}:secret:[\w/+=.@-]+$")
_PARAMETER_ARN = re.compile(r"^arn:aws[a-z-]*:ssm:([a-z0-9-]+):\d{12}:parameter/[\w/.-]+$")
_PARAMETER_NAME = re.compile(r"^/?[\w.-]+(/[\w.-]+)*$")


@dataclass(frozen=True)
class SecretReference:
    """Where the value of one secret setting is kept in AWS."""

    setting: str  # the setting it provides, e.g. DATABASE_URL
    variable: str  # the variable that named it, e.g. DATABASE_URL_SECRET_ARN
    store: str  # SECRETS_MANAGER or PARAMETER_STORE
    name: str  # the secret's ARN, or the parameter's name or ARN
    region: str | None  # from the ARN; None: the function's own region

    def describe(self) -> str:
        kind = "secret" if self.store == SECRETS_MANAGER else "parameter"
        return f"{kind} {self.name}"


# Reads the values of references: {setting: value}. Raises ConfigError naming the variable.
SecretResolver = Callable[[Sequence[SecretReference]], Mapping[str, str]]
_Parsed = TypeVar("_Parsed")


def secret_references(
    environ: Mapping[str, str] | None = None, settings: Sequence[str] = SECRET_SETTINGS
) -> tuple[SecretReference, ...]:
    """The `settings` given by reference, validated; empty when every value is plain."""
    env = os.environ if environ is None else environ
    found = []
    for setting in settings:
        arn_var, param_var = f"{setting}_SECRET_ARN", f"{setting}_PARAMETER"
        arn = (env.get(arn_var) or "").strip()
        param = (env.get(param_var) or "").strip()
        if arn and param:
            raise ConfigError(param_var, f"set {arn_var} or {param_var}, not both")
        if not (arn or param):
            continue
        variable = arn_var if arn else param_var
        if (env.get(setting) or "").strip():
            raise ConfigError(variable, f"{setting} is set too: give the value or a reference, not both")
        if arn:
            match = _SECRET_ARN.match(arn)
            if not match:
                raise ConfigError(
                    arn_var,
                    "expected a Secrets Manager ARN, arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME",
                )
            found.append(SecretReference(setting, arn_var, SECRETS_MANAGER, arn, match.group(1)))
        else:
            match = _PARAMETER_ARN.match(param)
            if not match and not _PARAMETER_NAME.match(param):
                raise ConfigError(param_var, "expected an SSM parameter name (/path/name) or ARN")
            found.append(
                SecretReference(setting, param_var, PARAMETER_STORE, param, match.group(1) if match else None)
            )
    return tuple(found)


def _from_values_or_references(
    env: Mapping[str, str],
    settings: Sequence[str],
    resolve: SecretResolver | None,
    from_values: Callable[[Mapping[str, str]], _Parsed],
) -> _Parsed:
    """`from_values(env)`, with those of `settings` given by reference read by `resolve` first.

    Without a resolver a reference is a configuration error: plain values are the local way
    (the command line), and "REDIS_URL is required" would hide what is wrong.
    """
    references = secret_references(env, settings)
    if not references:
        return from_values(env)
    if resolve is None:
        ref = references[0]
        raise ConfigError(
            ref.variable,
            f"names a secret, but only the Lambda handler reads secrets by reference; "
            f"set {ref.setting} itself here",
        )
    resolved = resolve(references)
    try:
        return from_values({**env, **resolved})
    except ConfigError as exc:
        # Blame the reference the operator set, not a variable they never wrote.
        ref = next((r for r in references if r.setting == exc.variable), None)
        if ref is None:
            raise
        raise ConfigError(
            ref.variable, f"the value it names is not a valid {ref.setting}: {exc.problem}"
        ) from None


def parse_linger(raw: str | None) -> float:
    """`DRAIN_LINGER_SECONDS`: default 120, from 0 to 900 seconds."""
    if raw is None:
        return DEFAULT_LINGER_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError("DRAIN_LINGER_SECONDS", f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_LINGER_SECONDS:
        raise ConfigError(
            "DRAIN_LINGER_SECONDS", f"must be from 0 to {MAX_LINGER_SECONDS:g} seconds, got {raw!r}"
        )
    return seconds


def parse_rate(raw: str | None) -> float:
    """`COC_REQS_PER_SEC`: default 10, clamped to 30 with a warning, positive and finite."""
    if raw is None:
        return DEFAULT_REQS_PER_SEC
    try:
        rate = float(raw)
    except ValueError:
        raise ConfigError(
            "COC_REQS_PER_SEC", f"expected a number of requests per second, got {raw!r}"
        ) from None
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError("COC_REQS_PER_SEC", f"must be a positive number, got {raw!r}")
    if rate > MAX_REQS_PER_SEC:
        log.warning("COC_REQS_PER_SEC=%s is above the safe maximum; clamped to %s", raw, MAX_REQS_PER_SEC)
        return MAX_REQS_PER_SEC
    return rate
