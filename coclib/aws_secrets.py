"""Secret settings read by reference from AWS: Secrets Manager secrets, SSM SecureString parameters.

`coclib.references` finds the references (`DATABASE_URL_SECRET_ARN`, `COC_PASSWORD_PARAMETER`, ...);
`resolve_references` reads their values once, when a Lambda container starts, with Powertools'
parameters utility. Values never sit in the function's configuration (where
`lambda:GetFunctionConfiguration`, every published version and the tofu state would hold them),
and they never reach a log line: nothing here logs or raises with a value, and the settings
built from them feed the log redaction.

boto3 is the one the Lambda runtime provides; the layer does not ship it (it would add ~20 MB
and pin an older SDK than the runtime's). So it is imported only when a reference is given,
and a plain-value configuration (local runs, tests) never needs it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from coclib.errors import ConfigError
from coclib.references import SECRETS_MANAGER, SecretReference

log = logging.getLogger(__name__)

# Bound every call: a function in a VPC without a route to Secrets Manager or SSM (no NAT
# gateway, no interface endpoint) must fail its cold start with a message, not hang until
# Lambda's timeout.
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10
MAX_ATTEMPTS = 3
# At DEBUG these log whole HTTP responses, secret values included. Resolution runs before the
# log redaction can know the values, so they are kept at WARNING while it runs, whatever level
# the runtime or a previous configuration left.
SDK_LOGGERS = ("botocore", "boto3", "urllib3", "aws_lambda_powertools.utilities.parameters")
# The URL settings whose secret AWS may have created as JSON (username, password, host, ...)
# rather than the URL the variable holds: what to store instead.
_JSON_SECRETS = {
    "DATABASE_URL": "(an RDS-managed secret?); store the whole postgresql:// URI as the secret's text",
    "REDIS_URL": (
        "(an ElastiCache password-rotation secret?); store the whole rediss://user:password@host:6379 "
        "URL as the secret's text"
    ),
}


def resolve_references(
    references: Sequence[SecretReference], *, session: Any | None = None
) -> dict[str, str]:
    """Read each reference's value: {setting: value}. Raises `ConfigError` naming the variable.

    `session` is a boto3 Session (default: a new one, with the function's role and region).
    """
    if not references:
        return {}
    try:
        import boto3
        from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(
            references[0].variable,
            f"names a secret, but {exc.name or 'boto3'} is not importable (the Lambda runtime "
            "provides boto3; elsewhere, install it or give the value itself)",
        ) from None

    session = session or boto3.session.Session()
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    providers: dict[tuple[str, str | None], Any] = {}
    values: dict[str, str] = {}
    with _quiet(SDK_LOGGERS):
        for ref in references:
            values[ref.setting] = _read(ref, session, config, providers, SecretsProvider, SSMProvider)
    log.debug("read %d secret setting(s) by reference", len(values))
    return values


def _read(ref: SecretReference, session: Any, config: Any, providers: dict, *kinds: Any) -> str:
    """One reference's value, through one Powertools provider per (store, region)."""
    secrets_provider, ssm_provider = kinds
    key = (ref.store, ref.region)
    if key not in providers:
        # A secret's ARN names its region, which may not be the function's.
        client = session.client(ref.store, region_name=ref.region, config=config)
        kind = secrets_provider if ref.store == SECRETS_MANAGER else ssm_provider
        providers[key] = kind(boto3_client=client)
    provider = providers[key]
    try:
        if ref.store == SECRETS_MANAGER:
            raw = provider.get(ref.name, force_fetch=True)
        else:
            raw = provider.get(ref.name, decrypt=True, force_fetch=True)
    except Exception as exc:  # Powertools' GetParameterError, botocore's connection errors
        raise ConfigError(ref.variable, f"could not read {ref.describe()}: {_reason(exc)}") from None
    return _text(ref, raw)


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def _text(ref: SecretReference, raw: Any) -> str:
    """The value as the plain variable would hold it; the problem named, never the value."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(ref.variable, f"{ref.describe()} holds binary data, not text") from None
    if not isinstance(raw, str):
        raise ConfigError(ref.variable, f"{ref.describe()} holds no text value")
    value = raw.strip()  # a value saved from a file usually ends in a newline
    if not value:
        raise ConfigError(ref.variable, f"{ref.describe()} is empty")
    if value.startswith("{") and ref.setting in _JSON_SECRETS:
        raise ConfigError(ref.variable, f"{ref.describe()} holds JSON {_JSON_SECRETS[ref.setting]}")
    return value


def _reason(exc: BaseException) -> str:
    """One line about why a read failed: AWS's error code and message, which hold no value."""
    cause = exc.__cause__ or exc.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    text = (str(cause) if code else str(exc)).strip().splitlines()
    line = text[0][:300] if text else type(exc).__name__
    return line if not code or code in line else f"{code}: {line}"
