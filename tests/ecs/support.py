"""What the ECS SDK tests share: the server under test (started by run.sh), its JSON API, the
official SDK clients pointed at it, and polling with a deadline.

The server is `fleetrun demo`: four real agents, web-1 and web-2 in cn-hangzhou, db-1 and db-2 in
eu-central-1. Tests never deregister those four, and every command they retain they delete.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

import requests
from alibabacloud_ecs20140526 import models as m
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.utils_models import OpenApiRequest, Params
from darabonba.runtime import RuntimeOptions

HZ = "cn-hangzhou"
EU = "eu-central-1"

# The Tea SDK's two signature modes: its default ACS3-HMAC-SHA256 (`do_request`) and, with
# `signature_algorithm='v2'`, the RPC V1 HMAC-SHA1 of the legacy SDK and the CLI (`do_rpcrequest`).
MODES = ["acs3", "rpc-v1"]

# Per-instance InvocationStatus values after which nothing changes (research §9).
TERMINAL = {"Success", "Failed", "Error", "Timeout", "Terminated", "Cancelled", "Aborted", "Invalid"}


@dataclass(frozen=True)
class Server:
    """The running server, as run.sh describes it in the environment."""

    url: str
    endpoint: str
    admin_password: str
    data_dir: str
    log: str

    @staticmethod
    def from_env() -> "Server":
        missing = [
            name
            for name in ("FLEETRUN_ECS_URL", "FLEETRUN_ECS_ADMIN_PASSWORD", "FLEETRUN_ECS_DATA_DIR")
            if not os.environ.get(name)
        ]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} unset: these tests need a running server; run tests/ecs/run.sh"
            )
        url = os.environ["FLEETRUN_ECS_URL"].rstrip("/")
        return Server(
            url=url,
            endpoint=url.split("://", 1)[1],
            admin_password=os.environ["FLEETRUN_ECS_ADMIN_PASSWORD"],
            data_dir=os.environ["FLEETRUN_ECS_DATA_DIR"],
            log=os.environ.get("FLEETRUN_ECS_LOG", ""),
        )


@dataclass(frozen=True)
class AccessKey:
    id: str
    secret: str
    username: str


def unique(prefix: str) -> str:
    """A name no other test (or earlier run on the same data) uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


class JsonApi:
    """fleetrun's own JSON API (`/api/v1`) as one user, over HTTP Basic."""

    def __init__(self, server: Server, username: str, password: str):
        self.server = server
        self.username = username
        self.password = password
        self.http = requests.Session()
        self.http.auth = (username, password)
        self.http.trust_env = False

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"{self.server.url}/api/v1{path}", timeout=30, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        response = self.call("GET", path, params=params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def post(self, path: str, body: dict, expect: int = 201) -> Any:
        response = self.call("POST", path, json=body)
        assert response.status_code == expect, f"POST {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def invocation_count(self) -> int:
        """How many invocations the server has stored (the admin sees them all)."""
        return self.get("/invocations", page_size=1)["total"]

    def instances(self, region_id: str | None = None) -> list[dict]:
        params = {"page_size": 1000}
        if region_id:
            params["region_id"] = region_id
        return self.get("/instances", **params)["instances"]

    def create_user(self, role: str) -> "JsonApi":
        """A new user with `role`, and the JSON API as that user."""
        username = unique(f"ecs-{role}")
        password = secrets.token_urlsafe(18)
        self.post("/users", {"username": username, "password": password, "role": role})
        return JsonApi(self.server, username, password)

    def create_access_key(self, description: str = "ecs sdk tests") -> AccessKey:
        created = self.post("/access-keys", {"description": description})
        return AccessKey(created["access_key_id"], created["access_key_secret"], self.username)


def tea(server: Server, key: AccessKey, mode: str = "acs3", secret: str | None = None) -> EcsClient:
    """The official Python ECS client, changed only in endpoint, protocol and signature mode."""
    config = open_api_models.Config(
        access_key_id=key.id,
        access_key_secret=secret if secret is not None else key.secret,
        region_id=HZ,
        endpoint=server.endpoint,
        protocol="http",
    )
    if mode == "rpc-v1":
        config.signature_algorithm = "v2"
    return EcsClient(config)


def call_action(client: EcsClient, action: str, query: dict[str, str]) -> dict:
    """Any action, through the Tea client's generic `call_api`, as the generated methods send it."""
    params = Params(
        action=action,
        version="2014-05-26",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    return client.call_api(params, OpenApiRequest(query=query), RuntimeOptions())


def refusal(call: Callable[[], Any]) -> AlibabaCloudException:
    """The SDK's exception for a call that must be refused."""
    try:
        answer = call()
    except AlibabaCloudException as e:
        return e
    body = answer.body.to_map() if hasattr(answer, "body") else answer
    raise AssertionError(f"expected a refusal, got a success: {body}")


def describe(e: AlibabaCloudException) -> str:
    return f"{e.status_code} {e.code}: {e.data}"


def eventually(check: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.5) -> Any:
    """Calls `check` until it returns something truthy, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def results(client: EcsClient, region_id: str, invoke_id: str, **extra: Any) -> list:
    """Every per-instance row of one invocation (DescribeInvocationResults, one page of 50)."""
    body = client.describe_invocation_results(
        m.DescribeInvocationResultsRequest(region_id=region_id, invoke_id=invoke_id, page_size=50, **extra)
    ).body
    return body.invocation.invocation_results.invocation_result


def wait_finished(client: EcsClient, region_id: str, invoke_id: str, count: int, **extra: Any) -> list:
    """Polls DescribeInvocationResults until all `count` rows are in a terminal status."""

    def finished():
        rows = results(client, region_id, invoke_id, **extra)
        if len(rows) == count and all(r.invocation_status in TERMINAL for r in rows):
            return rows
        return None

    return eventually(finished, f"invocation {invoke_id} to finish on {count} instance(s)")


def run(
    client: EcsClient, region_id: str, instance_ids: list[str], content: str, **extra: Any
) -> m.RunCommandResponseBody:
    """RunCommand of a shell script, plain text unless `extra` says otherwise."""
    extra.setdefault("timeout", 60)
    request = m.RunCommandRequest(
        region_id=region_id, type="RunShellScript", command_content=content, instance_id=instance_ids, **extra
    )
    return client.run_command(request).body


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def pages_by_number(fetch: Callable[[int], tuple[list, int, int]]) -> tuple[list, int]:
    """Walks PageNumber 1, 2, … with `fetch(page) -> (items, total_count, page_size)` until the
    items add up to TotalCount; checks each page but the last is full. Returns the items and how
    many pages it took."""
    collected: list = []
    page = 1
    while True:
        items, total, size = fetch(page)
        assert size >= 1, f"PageSize {size} echoed"
        assert len(items) <= size, f"page {page} has {len(items)} items, PageSize {size}"
        collected.extend(items)
        if len(collected) >= total or not items:
            break
        assert len(items) == size, f"page {page} is short ({len(items)} of {size}) before the end"
        page += 1
        assert page < 1000, "pagination does not end"
    assert len(collected) == total, f"collected {len(collected)} items, TotalCount {total}"
    return collected, page


def pages_by_token(fetch: Callable[[str | None], tuple[list, str]]) -> tuple[list, int]:
    """Walks NextToken with `fetch(token) -> (items, next_token)` until NextToken is "" (the
    last page). Returns the items and how many pages it took."""
    collected: list = []
    token = None
    pages = 0
    while True:
        items, token = fetch(token)
        pages += 1
        collected.extend(items)
        assert token is not None, "NextToken missing (it must be \"\" on the last page)"
        if token == "":
            break
        assert items, "a page with a NextToken has no items"
        assert pages < 1000, "pagination does not end"
    return collected, pages


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def pct(text: str) -> str:
    """RFC 3986 encoding of UTF-8, as both signature schemes canonicalise (research §4.2)."""
    return quote(text, safe="-_.~")


def sign_rpc_v1(params: dict[str, str], key: AccessKey, method: str, form: dict[str, str] | None = None) -> dict:
    """Adds the RPC V1 (HMAC-SHA1) common parameters and signature to `params`, signing the form
    body's parameters too: the request the Go SDK and the `aliyun` CLI send (research §5.2)."""
    signed = {
        "Format": "JSON",
        "Version": "2014-05-26",
        "AccessKeyId": key.id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureType": "",
        "SignatureVersion": "1.0",
        "SignatureNonce": secrets.token_hex(16),
        "Timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **params,
    }
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted({**signed, **(form or {})}.items()))
    string_to_sign = f"{method}&{pct('/')}&{pct(canonical)}"
    digest = hmac.new((key.secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    signed["Signature"] = base64.b64encode(digest).decode()
    return signed
