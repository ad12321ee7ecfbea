"""Refusals through the official Python SDK, in both signature modes: each gives the code and HTTP
status the SDKs expect, and a refused RunCommand stores nothing."""

from __future__ import annotations

import contextlib
import datetime
import secrets

import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_tea_openapi.utils import Utils

import support
from support import HZ, AccessKey


@pytest.fixture
def nothing_stored(admin):
    """A context that asserts no invocation was stored inside it."""

    @contextlib.contextmanager
    def check():
        before = admin.invocation_count()
        yield
        assert admin.invocation_count() == before, "a refused RunCommand stored an invocation"

    return check


def run_hello(ecs, instance_ids, **extra):
    return lambda: support.run(ecs, HZ, instance_ids, "echo hello", **extra)


def assert_refused(refused, status: int, code: str):
    assert (refused.status_code, refused.code) == (status, code), support.describe(refused)
    assert refused.request_id and refused.request_id != "None", support.describe(refused)
    assert refused.data.get("Message"), support.describe(refused)


def test_a_wrong_secret_is_signature_does_not_match(server, operator_key, mode, hz, nothing_stored):
    ecs = support.tea(server, operator_key, mode, secret="not-the-secret")

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert_refused(refused, 400, "SignatureDoesNotMatch")
    # The legacy SDK splits this message on ':' (research §7).
    assert ":" in refused.data["Message"]


def test_an_unknown_access_key_id_is_not_found(server, mode, hz, nothing_stored):
    stranger = AccessKey("LTAI" + secrets.token_hex(10), secrets.token_urlsafe(24), "nobody")
    ecs = support.tea(server, stranger, mode)

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert_refused(refused, 404, "InvalidAccessKeyId.NotFound")


def test_a_disabled_key_is_inactive_until_enabled_again(server, admin, mode, hz, nothing_stored):
    user = admin.create_user("operator")
    key = user.create_access_key()
    ecs = support.tea(server, key, mode)
    assert user.call("PATCH", f"/access-keys/{key.id}", json={"enabled": False}).status_code in (200, 204)

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))
    assert user.call("PATCH", f"/access-keys/{key.id}", json={"enabled": True}).status_code in (200, 204)
    works_again = support.run(ecs, HZ, hz[:1], "echo again").invoke_id

    assert_refused(refused, 400, "InvalidAccessKeyId.Inactive")
    assert works_again.startswith("t-")


def test_a_deleted_key_is_not_found(server, admin, mode, hz, nothing_stored):
    user = admin.create_user("operator")
    key = user.create_access_key()
    ecs = support.tea(server, key, mode)
    ecs.describe_regions(m.DescribeRegionsRequest())
    assert user.call("DELETE", f"/access-keys/{key.id}").status_code in (200, 204)

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert_refused(refused, 404, "InvalidAccessKeyId.NotFound")


@pytest.mark.parametrize("minutes", [-20, 20], ids=["past", "future"])
def test_a_timestamp_more_than_15_minutes_off_is_expired(ecs, hz, monkeypatch, minutes, nothing_stored):
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    monkeypatch.setattr(Utils, "get_timestamp", staticmethod(lambda: when.strftime("%Y-%m-%dT%H:%M:%SZ")))

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert_refused(refused, 400, "InvalidTimeStamp.Expired")


def test_a_timestamp_a_few_minutes_off_is_accepted(ecs, hz, monkeypatch):
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    monkeypatch.setattr(Utils, "get_timestamp", staticmethod(lambda: when.strftime("%Y-%m-%dT%H:%M:%SZ")))

    invoke_id = support.run(ecs, HZ, hz[:1], "echo skewed").invoke_id

    assert invoke_id.startswith("t-")


def test_a_reused_nonce_is_refused(ecs, admin, hz, monkeypatch, nothing_stored):
    nonce = secrets.token_hex(16)
    monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: nonce))
    first = support.run(ecs, HZ, hz[:1], "echo first").invoke_id

    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert first.startswith("t-")
    assert_refused(refused, 400, "SignatureNonceUsed")


def test_a_viewer_s_key_may_read_but_not_run(server, viewer_key, mode, hz, nothing_stored):
    ecs = support.tea(server, viewer_key, mode)

    instances = ecs.describe_instances(m.DescribeInstancesRequest(region_id=HZ)).body
    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz))

    assert instances.total_count >= 2
    assert_refused(refused, 403, "Forbidden.RAM")


def test_an_unknown_instance_is_not_found(ecs, hz, nothing_stored):
    with nothing_stored():
        alone = support.refusal(run_hello(ecs, ["i-doesnotexist"]))
        among_known = support.refusal(run_hello(ecs, [hz[0], "i-doesnotexist"]))

    assert_refused(alone, 404, "InvalidInstance.NotFound")
    assert_refused(among_known, 404, "InvalidInstance.NotFound")


def test_an_unknown_action_is_not_found(ecs):
    refused = support.refusal(lambda: support.call_action(ecs, "DescribeNothingAtAll", {"RegionId": HZ}))

    assert_refused(refused, 404, "InvalidAction.NotFound")


@pytest.mark.parametrize(
    "extra,named",
    [
        ({"repeat_mode": "Period"}, "Frequency"),
        ({"container_id": "ab12cd34ef56"}, "ContainerId"),
        ({"resource_group_id": "rg-aek2kkmhmhs4kfq"}, "ResourceGroupId"),
    ],
    ids=["RepeatMode=Period without Frequency", "ContainerId", "ResourceGroupId"],
)
def test_an_unsupported_parameter_is_refused_by_name(ecs, hz, extra, named, nothing_stored):
    with nothing_stored():
        refused = support.refusal(run_hello(ecs, hz, **extra))

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code.startswith("InvalidParameter"), support.describe(refused)
    assert named in refused.data.get("Message", "") or named in refused.code, support.describe(refused)


def test_repeat_mode_once_and_the_account_fields_are_accepted(ecs, hz):
    invoke_id = support.run(
        ecs,
        HZ,
        hz[:1],
        "echo once",
        repeat_mode="Once",
        owner_id=1234567890,
        owner_account="someone@example.com",
        resource_owner_id=1234567890,
        resource_owner_account="someone@example.com",
    ).invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 1, content_encoding="PlainText")

    assert rows[0].output == "once\n"


def test_a_missing_required_parameter_is_refused(ecs, hz, nothing_stored):
    with nothing_stored():
        refused = support.refusal(
            lambda: support.call_action(
                ecs, "RunCommand", {"RegionId": HZ, "Type": "RunShellScript", "InstanceId.1": hz[0]}
            )
        )

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code.startswith("Missing"), support.describe(refused)
    assert "CommandContent" in refused.code + refused.data.get("Message", ""), support.describe(refused)


def test_parameters_that_are_not_a_json_object_are_refused(ecs, hz, nothing_stored):
    query = {
        "RegionId": HZ,
        "Type": "RunShellScript",
        "CommandContent": "echo {{who}}",
        "InstanceId.1": hz[0],
        "EnableParameter": "true",
        # What the legacy SDK sends when handed a dict instead of json.dumps(...) (research §6).
        "Parameters": "{'who': 'Jack Smith'}",
    }

    with nothing_stored():
        refused = support.refusal(lambda: support.call_action(ecs, "RunCommand", query))

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code.startswith("InvalidParameter"), support.describe(refused)


def test_a_placeholder_without_a_value_is_refused_by_name(ecs, hz, nothing_stored):
    with nothing_stored():
        refused = support.refusal(
            lambda: support.run(ecs, HZ, hz[:1], "echo {{who}}", enable_parameter=True, parameters={})
        )

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code.startswith("InvalidParameter"), support.describe(refused)
    assert "who" in refused.data.get("Message", ""), support.describe(refused)


def test_an_instance_of_another_region_is_not_found(ecs, eu, nothing_stored):
    with nothing_stored():
        refused = support.refusal(run_hello(ecs, eu[:1]))

    assert_refused(refused, 404, "InvalidInstance.NotFound")


def test_stopping_an_unknown_invocation_is_not_found(ecs):
    refused = support.refusal(
        lambda: ecs.stop_invocation(m.StopInvocationRequest(region_id=HZ, invoke_id="t-doesnotexist"))
    )

    assert_refused(refused, 404, "InvalidInvokeId.NotFound")
