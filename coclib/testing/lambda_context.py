"""Lambda invocation inputs for tests and the local server: a context and real event shapes.

`LambdaContext` has the attributes and the method of the context object the Python runtime
(awslambdaric) passes to a handler, with the same types: `memory_limit_in_mb` is a string,
`get_remaining_time_in_millis()` counts down from the function's timeout on the wall clock.

The event builders follow the shapes AWS documents and sends:

* `scheduled_event()`: an EventBridge rule's scheduled event (`aws_cloudwatch_event_rule` with
  a `schedule_expression` and no custom input, as tofu/schedule.tf configures it);
* `rest_event()`: an API Gateway REST API Lambda proxy integration event (payload 1.0), as the
  method resources of tofu/api_gateway.tf send it (`resource` is the path, no `{proxy+}`);
* `http_api_event()`: an HTTP API / function URL event (payload 2.0), which the worker refuses;
* `alb_event()`: an Application Load Balancer target group event, which it refuses too.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"
REGION = "eu-west-1"


class LambdaContext:
    """The context object of one invocation (awslambdaric's `LambdaContext`, same attributes)."""

    def __init__(
        self,
        *,
        timeout_seconds: float = 300.0,
        function_name: str = "coc-refresh-worker",
        function_version: str = "$LATEST",
        memory_mb: int = 512,
        region: str = REGION,
        account: str = ACCOUNT,
        alias: str | None = "live",
        request_id: str | None = None,
    ) -> None:
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = str(memory_mb)  # a string on Lambda too
        qualifier = f":{alias}" if alias else ""
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}{qualifier}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        today = datetime.now(UTC).strftime("%Y/%m/%d")
        self.log_stream_name = f"{today}/[{function_version}]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline_ms = int(time.time() * 1000 + timeout_seconds * 1000)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until Lambda stops the invocation (never negative)."""
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r}, "
            f"remaining_ms={self.get_remaining_time_in_millis()})"
        )


def scheduled_event(
    *,
    rule: str = "coc-refresh-worker-schedule",
    region: str = REGION,
    account: str = ACCOUNT,
    at: datetime | None = None,
) -> dict[str, Any]:
    """An EventBridge scheduled event, as a rule with a schedule expression delivers it."""
    moment = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": moment,
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule}"],
        "detail": {},
    }


_TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/xml")
# What a client like curl sends, for events built without the headers of a real request.
_CLIENT_HEADERS = {"Accept": "*/*", "User-Agent": "curl/8.5.0"}


def rest_event(
    method: str,
    path: str,
    *,
    body: str | bytes | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    query: dict[str, list[str]] | None = None,
    stage: str = "prod",
    source_ip: str = "203.0.113.7",
    api_id: str = "a1b2c3d4e5",
    domain: str | None = None,
    region: str = REGION,
    account: str = ACCOUNT,
    client_headers: bool = True,
) -> dict[str, Any]:
    """An API Gateway REST API proxy event (payload 1.0) for `method path`.

    `headers` may repeat a name (as pairs): `headers` keeps the last value and
    `multiValueHeaders` all of them, as API Gateway does. With `client_headers`, the
    headers a client and API Gateway's front end add (Accept, User-Agent, Host, X-Forwarded-*,
    X-Amzn-Trace-Id) are filled in where `headers` lacks them. Text bodies are passed as
    they are; bodies that are not UTF-8 text are base64-encoded (see `_encode_body`).
    """
    domain = domain or f"{api_id}.execute-api.{region}.amazonaws.com"
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    if client_headers:
        given = {name.lower() for name, _ in pairs}
        defaults = {
            **_CLIENT_HEADERS,
            "Host": domain,
            "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
            "X-Forwarded-For": source_ip,
            "X-Forwarded-Port": "443",
            "X-Forwarded-Proto": "https",
        }
        if body is not None:
            defaults["Content-Type"] = "application/json"
        pairs = [(name, value) for name, value in defaults.items() if name.lower() not in given] + pairs
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value
        multi.setdefault(name, []).append(value)
    text, encoded = _encode_body(body, single)
    now = datetime.now(UTC)
    return {
        "resource": path,
        "path": path,
        "httpMethod": method.upper(),
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} if query else None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid4().hex[:6],
            "resourcePath": path,
            "httpMethod": method.upper(),
            "extendedRequestId": base64.b32encode(uuid.uuid4().bytes).decode()[:16],
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{stage}{path}",
            "accountId": account,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": domain.split(".")[0].split(":")[0],
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": _header(single, "User-Agent"),
                "user": None,
                "apiKey": _header(single, "X-Api-Key"),
                "apiKeyId": None,
            },
            "domainName": domain,
            "apiId": api_id,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def _header(headers: dict[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def _encode_body(body: str | bytes | None, headers: dict[str, str]) -> tuple[str | None, bool]:
    # API Gateway passes text as is and, for binary media types, base64. Without a binary
    # media type configured, only what is not UTF-8 text (or is NUL-bearing binary) is base64.
    if body is None or body == b"":
        return None, False
    if isinstance(body, str):
        return body, False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True
    content_type = (_header(headers, "Content-Type") or "").lower()
    if content_type and not content_type.startswith(_TEXT_TYPES) and "\x00" in text:
        return base64.b64encode(body).decode("ascii"), True
    return text, False


def http_api_event(method: str, path: str) -> dict[str, Any]:
    """An API Gateway HTTP API (or function URL) event, payload format 2.0."""
    now = datetime.now(UTC)
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"accept": "*/*", "user-agent": "curl/8.5.0"},
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "a1b2c3d4e5",
            "domainName": f"a1b2c3d4e5.execute-api.{REGION}.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }


def alb_event(method: str, path: str, *, body: str | None = None) -> dict[str, Any]:
    """An Application Load Balancer event (a Lambda target group, multi-value headers off)."""
    group = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/coc/6d0ecf831eec9f09"
    return {
        "requestContext": {"elb": {"targetGroupArn": group}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {},
        "headers": {
            "accept": "*/*",
            "host": "coc-123.eu-west-1.elb.amazonaws.com",
            "user-agent": "curl/8.5.0",
        },
        "body": body or "",
        "isBase64Encoded": False,
    }
