"""Settings: the only place in the project that reads the environment.

`Settings.from_env()` parses and validates every variable once; everything else receives a
`Settings` (or the group of it that it needs) as an argument. `Settings` is composed of groups,
and a tool that needs less reads one group alone: `DatabaseSettings` (Postgres: `python -m worker
migrate`, `python -m ledger`), `QueueSettings` (a producer: Redis and the queue key) and
`ApiSettings` (the CoC API).

`VARIABLES` is the one table of variables: what each means (for help texts), how its text
becomes a value, and which secrets it holds. A group's field is named after its variable
(`coc_reqs_per_sec` is `COC_REQS_PER_SEC`), so a new setting is one entry in the table and one
field in a group; rules across variables live in the group's `_check`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from coclib.errors import ConfigError
from coclib.references import SecretReference, SecretResolver, secret_references, with_references

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

# How a variable's text becomes its value: (variable name, stripped text or None when unset or
# blank) -> value, or ConfigError naming the variable.
Parse = Callable[[str, str | None], Any]


@dataclass(frozen=True)
class Variable:
    """One environment variable: its help text, its parser and the secrets its value holds."""

    help: str
    parse: Parse
    # The secret strings in a value, for log redaction. A variable that holds secrets may also
    # be given by reference (`coclib.references`).
    secrets: Callable[[Any], Iterable[str | None]] | None = None


# --- parsers --------------------------------------------------------------------------------------


def _optional(name: str, raw: str | None) -> str | None:
    return raw


def _or(default: str) -> Parse:
    return lambda name, raw: default if raw is None else raw


def _required(name: str, raw: str | None) -> str:
    if raw is None:
        raise ConfigError(name, "is required but not set")
    return raw


def _database_url(name: str, raw: str | None) -> str:
    value = _required(name, raw)
    if not value.startswith(("postgres://", "postgresql://")) and "=" not in value:
        raise ConfigError(name, "expected a libpq URI (postgresql://…)")
    return value


def _boolean(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        raise ConfigError(name, f"expected true or false, got {raw!r}")
    return value


def _one_of(choices: tuple[str, ...], default: str, normalise: Callable[[str], str]) -> Parse:
    def parse(name: str, raw: str | None) -> str:
        value = normalise(raw or default)
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}")
        return value

    return parse


def _comma_list(name: str, raw: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (raw or "").split(",") if t.strip())


def _http_url(name: str, raw: str | None) -> str:
    value = (raw or DEFAULT_API_BASE_URL).rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(name, "expected an http:// or https:// URL")
    return value


def _rate(name: str, raw: str | None) -> float:
    """Default 10, clamped to 30 with a warning, positive and finite."""
    if raw is None:
        return DEFAULT_REQS_PER_SEC
    try:
        rate = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number of requests per second, got {raw!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(name, f"must be a positive number, got {raw!r}")
    if rate > MAX_REQS_PER_SEC:
        log.warning("%s=%s is above the safe maximum; clamped to %s", name, raw, MAX_REQS_PER_SEC)
        return MAX_REQS_PER_SEC
    return rate


def _on_off(name: str, raw: str | None) -> bool:
    """`on` (the default) or `off`."""
    value = (raw or "on").lower()
    if value not in ("on", "off"):
        raise ConfigError(name, f"expected on or off, got {raw!r}")
    return value == "on"


def _linger(name: str, raw: str | None) -> float:
    """Default 120, from 0 to 900 seconds."""
    if raw is None:
        return DEFAULT_LINGER_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_LINGER_SECONDS:
        raise ConfigError(name, f"must be from 0 to {MAX_LINGER_SECONDS:g} seconds, got {raw!r}")
    return seconds


def _days(name: str, raw: str | None) -> int | None:
    if raw is not None and (not raw.isdigit() or int(raw) < 1):
        raise ConfigError(name, "must be a whole number of days, 1 or more")
    return int(raw) if raw else None


# --- secrets in values ----------------------------------------------------------------------------


def _itself(value: str | None) -> tuple[str | None, ...]:
    return (value,)


def _each(values: tuple[str, ...]) -> tuple[str, ...]:
    return values


def _url_password(url: str) -> tuple[str, ...]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password,) if password else ()


def _database_password(url: str) -> tuple[str | None, ...]:
    """The password in a URI or a key=value conninfo string."""
    found: list[str | None] = list(_url_password(url))
    with contextlib.suppress(psycopg.ProgrammingError):  # not a key=value string either
        found.append(conninfo_to_dict(url).get("password"))
    return tuple(found)


# Every variable, in the order help texts list them. A group's field `name` reads `NAME`.
VARIABLES: dict[str, Variable] = {
    "DATABASE_URL": Variable("libpq URI of Postgres (required)", _database_url, _database_password),
    "REDIS_URL": Variable(
        "redis://, rediss:// or unix:// URL of Redis, any node of a cluster (required)",
        _required,
        _url_password,
    ),
    "REDIS_CLUSTER": Variable(
        "true or false: whether Redis is a cluster (default: asked of the server)", _boolean
    ),
    "SSL_CERT_FILE": Variable("with rediss://: a CA bundle to trust besides the system's", _optional),
    "REFRESH_QUEUE_KEY": Variable(
        f"the queue's Redis key, any name (default {DEFAULT_QUEUE_KEY})", _or(DEFAULT_QUEUE_KEY)
    ),
    "COC_API_TOKENS": Variable(
        "comma-separated static API tokens (or COC_EMAIL and COC_PASSWORD)", _comma_list, _each
    ),
    "COC_EMAIL": Variable("developer-portal login, with COC_PASSWORD (or COC_API_TOKENS)", _optional),
    "COC_PASSWORD": Variable("developer-portal password, with COC_EMAIL", _optional, _itself),
    "COC_API_BASE_URL": Variable(f"the API's address (default {DEFAULT_API_BASE_URL})", _http_url),
    "COC_REQS_PER_SEC": Variable(
        f"API requests per second (default {DEFAULT_REQS_PER_SEC:g}, at most {MAX_REQS_PER_SEC:g})", _rate
    ),
    "ENVIRONMENT": Variable(
        f"{', '.join(ENVIRONMENTS)} (default development)", _one_of(ENVIRONMENTS, "development", str.lower)
    ),
    "LOG_LEVEL": Variable("log level (default INFO)", _one_of(LOG_LEVELS, "INFO", str.upper)),
    "DRAIN_LINGER_SECONDS": Variable(
        f"a scheduled run with both lanes empty waits this long for new requests "
        f"(default {DEFAULT_LINGER_SECONDS:g}; 0: return at once)",
        _linger,
    ),
    "LEDGER_RETENTION_DAYS": Variable(
        "drop ledger partitions older than this many days (default: keep all)", _days
    ),
    "FRESHNESS": Variable(
        "on or off: settle requests for snapshots the API would only repeat, uncalled (default on)",
        _on_off,
    ),
}


def _get(env: Mapping[str, str], name: str) -> str | None:
    """The one getter: a variable's text, stripped; None when unset or blank."""
    return (env.get(name) or "").strip() or None


# --- groups ---------------------------------------------------------------------------------------


class _Group:
    """A frozen dataclass of settings whose fields are variables (named in lower case) or groups.

    Parsing, references, redaction and `repr` are the same for every group, and written here once.
    """

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """The variables this group reads, its subgroups' included."""
        return tuple(
            name
            for _, variable, group in _members(cls)
            for name in (group.variables() if group else (variable,))
        )

    @classmethod
    def secret_variables(cls) -> tuple[str, ...]:
        """Those of `variables()` that hold secrets, and so may be given by reference."""
        return tuple(name for name in cls.variables() if VARIABLES[name].secrets)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, resolve: SecretResolver | None = None
    ) -> Self:
        """Read and validate this group's variables; raise `ConfigError` naming the first bad one.

        A secret setting may be given by reference instead (`DATABASE_URL_SECRET_ARN`,
        `COC_PASSWORD_PARAMETER`, ...: see `coclib.references`); `resolve` reads the values
        (`coclib.aws_secrets.resolve_references` in Lambda). Without a resolver, a reference is
        a configuration error naming it: plain values are the local way.
        """
        env = os.environ if environ is None else environ
        return with_references(env, cls.secret_variables(), resolve, cls._from_values)

    @classmethod
    def references(cls, environ: Mapping[str, str] | None = None) -> tuple[SecretReference, ...]:
        """This group's secret settings given by reference, validated; empty when all are plain."""
        return secret_references(os.environ if environ is None else environ, cls.secret_variables())

    @classmethod
    def _from_values(cls, env: Mapping[str, str]) -> Self:
        """Validate plain values (from the environment, or resolved from references)."""
        values = {}
        for field, variable, group in _members(cls):
            if group:
                values[field] = group._from_values(env)
            else:
                values[field] = VARIABLES[variable].parse(variable, _get(env, variable))
        return cls(**cls._check(values))

    @classmethod
    def _check(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Rules across this group's variables, once each is parsed; the values to keep."""
        return values

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the group, for log redaction."""
        found: list[str | None] = []
        for field, variable, group in _members(type(self)):
            value = getattr(self, field)
            if group:
                found.extend(value.secrets())
            elif VARIABLES[variable].secrets:
                found.extend(VARIABLES[variable].secrets(value))
        return tuple(dict.fromkeys(s for s in found if s))

    def __repr__(self) -> str:
        """Every field, each secret in it replaced by `***` (the longest first)."""
        secrets = sorted(self.secrets(), key=len, reverse=True)

        def shown(value: Any) -> Any:
            if isinstance(value, str):
                for secret in secrets:
                    value = value.replace(secret, "***")
            elif isinstance(value, tuple):
                value = tuple(map(shown, value))
            return value

        parts = (f"{f.name}={shown(getattr(self, f.name))!r}" for f in fields(self))
        return f"{type(self).__name__}({', '.join(parts)})"


@functools.cache
def _members(cls: type[_Group]) -> tuple[tuple[str, str, type[_Group] | None], ...]:
    """(field, variable, subgroup) for each field of a group: a variable's, or a subgroup's."""
    members = []
    for f in fields(cls):
        variable = f.name.upper()
        if variable in VARIABLES:
            members.append((f.name, variable, None))
            continue
        group = typing.get_type_hints(cls)[f.name]
        if not (isinstance(group, type) and issubclass(group, _Group)):
            raise TypeError(f"{cls.__name__}.{f.name}: add {variable} to VARIABLES, or make it a group")
        members.append((f.name, "", group))
    return tuple(members)


@dataclass(frozen=True, repr=False)
class DatabaseSettings(_Group):
    """Postgres alone (`python -m worker migrate`, `python -m ledger`)."""

    database_url: str


@dataclass(frozen=True, repr=False)
class QueueSettings(_Group):
    """What a producer needs and nothing more (`python -m worker enqueue`): Redis and the queue key."""

    redis_url: str
    redis_cluster: bool | None  # None: detected when connecting
    ssl_cert_file: str | None  # CA bundle for rediss:// (the standard SSL_CERT_FILE)
    # Any key is accepted: coclib.keys puts the derived keys in its slot, tag or no tag.
    refresh_queue_key: str

    @classmethod
    def _check(cls, values: dict[str, Any]) -> dict[str, Any]:
        url, bundle = values["redis_url"], values["ssl_cert_file"]
        check_redis_url(url, cluster=values["redis_cluster"])
        if not url.startswith("rediss://"):
            bundle = None  # not ours to judge when Redis is not on TLS
        elif bundle is not None and not os.path.isfile(bundle):
            raise ConfigError("SSL_CERT_FILE", f"names {bundle!r}, which is not a readable file")
        return {**values, "ssl_cert_file": bundle}


@dataclass(frozen=True, repr=False)
class ApiSettings(_Group):
    """The CoC API: credentials (either form), its address and the request rate."""

    coc_email: str | None
    coc_password: str | None
    coc_api_tokens: tuple[str, ...]
    coc_api_base_url: str
    coc_reqs_per_sec: float

    @classmethod
    def _check(cls, values: dict[str, Any]) -> dict[str, Any]:
        email, password = values["coc_email"], values["coc_password"]
        if (email is None) != (password is None):
            missing = "COC_PASSWORD" if password is None else "COC_EMAIL"
            raise ConfigError(missing, "COC_EMAIL and COC_PASSWORD must be set together")
        return values

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


@dataclass(frozen=True, repr=False)
class Settings(_Group):
    """The whole worker's configuration. `repr` masks every secret."""

    database: DatabaseSettings
    queue: QueueSettings
    api: ApiSettings
    environment: str
    log_level: str
    ledger_retention_days: int | None
    freshness: bool  # FRESHNESS: the freshness gate (worker.freshness)
    drain_linger_seconds: float


# The settings that may be given by reference (tofu's module offers the same).
SECRET_SETTINGS = Settings.secret_variables()


def project_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The project's variables (`VARIABLES`) that are set and not blank, as a new dict.

    For a tool that fills in what is missing and then parses it with `Settings.from_env` (the
    demo supplies embedded services and the simulator).
    """
    env = os.environ if environ is None else environ
    return {name: env[name] for name in VARIABLES if _get(env, name)}


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
