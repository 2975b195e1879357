"""Secret settings given by reference: `NAME_SECRET_ARN` or `NAME_PARAMETER` instead of `NAME`.

A secret setting (`coclib.settings.SECRET_SETTINGS`) may name where its value is kept in AWS
instead of holding it: `NAME_SECRET_ARN`, a Secrets Manager secret's ARN, or `NAME_PARAMETER`, an
SSM SecureString parameter's name or ARN. The secret's text is exactly what `NAME` would hold.
This module finds and checks the references; `coclib.aws_secrets` reads their values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from coclib.errors import ConfigError

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


def secret_references(env: Mapping[str, str], settings: Sequence[str]) -> tuple[SecretReference, ...]:
    """Those of `settings` given by reference in `env`, validated; empty when every value is plain."""
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


def with_references(
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
