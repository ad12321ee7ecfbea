"""Issue 14 through the official Python SDK: RunCommand and InvokeCommand aimed at instances by
`ResourceTag.N`, the invocation's own `Tag.N`, idempotent `ClientToken`, `RepeatMode=DryRun`, and
the `Tag.N` filter of DescribeInstances and DescribeManagedInstances."""

from __future__ import annotations

import contextlib
import secrets

import pytest
from alibabacloud_ecs20140526 import models as m

import support
from support import HZ


@pytest.fixture
def tagged(admin, hz):
    """hz[0] carries a tag no other instance has (`ecs-test=<random>`); its tags are cleared after."""
    key, value = "ecs-test", secrets.token_hex(4)
    path = f"/instances/{hz[0]}/tags"
    response = admin.call("PUT", path, json={"tags": [{"key": key, "value": value}]})
    assert response.status_code == 200, response.text
    yield key, value
    admin.call("PUT", path, json={"tags": []})


@contextlib.contextmanager
def stored(admin, count: int):
    before = admin.invocation_count()
    yield
    assert admin.invocation_count() == before + count


def test_resource_tags_target_the_tagged_instances_and_tags_label_the_invocation(ecs, hz, tagged):
    key, value = tagged

    answer = support.run(
        ecs,
        HZ,
        [],
        "echo by tag",
        resource_tag=[m.RunCommandRequestResourceTag(key=key, value=value)],
        tag=[m.RunCommandRequestTag(key="team", value="ops")],
    )
    rows = support.wait_finished(ecs, HZ, answer.invoke_id, 1, content_encoding="PlainText")
    invocation = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=answer.invoke_id)
    ).body.invocations.invocation[0]

    assert [r.instance_id for r in rows] == [hz[0]]
    assert rows[0].output == "by tag\n"
    assert [(t.tag_key, t.tag_value) for t in invocation.tags.tag] == [("team", "ops")]


def test_resource_tags_that_match_nothing_are_refused(ecs, admin):
    with stored(admin, 0):
        refused = support.refusal(
            lambda: support.run(
                ecs, HZ, [], "echo nobody", resource_tag=[m.RunCommandRequestResourceTag(key="ecs-test", value="none")]
            )
        )

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code == "InvalidParameter.ResourceTag", support.describe(refused)
    assert "no instance of region cn-hangzhou" in refused.data.get("Message", ""), support.describe(refused)


def test_the_same_client_token_answers_the_first_invocation(ecs, hz, admin):
    token = support.unique("token")

    with stored(admin, 1):
        first = support.run(ecs, HZ, hz[:1], "echo once", client_token=token)
        again = support.run(ecs, HZ, hz[:1], "echo once", client_token=token)
    support.wait_finished(ecs, HZ, first.invoke_id, 1)

    assert again.invoke_id == first.invoke_id


def test_invoke_command_takes_resource_tags_and_a_client_token(ecs, hz, admin, tagged):
    key, value = tagged
    name = support.unique("tagged")
    command_id = ecs.create_command(
        m.CreateCommandRequest(region_id=HZ, name=name, type="RunShellScript", command_content=support.b64("echo invoked"))
    ).body.command_id
    request = m.InvokeCommandRequest(
        region_id=HZ,
        command_id=command_id,
        resource_tag=[m.InvokeCommandRequestResourceTag(key=key, value=value)],
        client_token=support.unique("invoke"),
    )
    try:
        with stored(admin, 1):
            first = ecs.invoke_command(request).body.invoke_id
            again = ecs.invoke_command(request).body.invoke_id
        rows = support.wait_finished(ecs, HZ, first, 1, content_encoding="PlainText")
    finally:
        ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=command_id))

    assert again == first
    assert [(r.instance_id, r.output) for r in rows] == [(hz[0], "invoked\n")]


def test_a_dry_run_answers_dry_run_operation_and_stores_nothing(ecs, hz, admin):
    with stored(admin, 0):
        passed = support.refusal(lambda: support.run(ecs, HZ, hz, "echo dry", repeat_mode="DryRun"))
        unknown = support.refusal(
            lambda: support.run(ecs, HZ, ["i-doesnotexist00000000"], "echo dry", repeat_mode="DryRun")
        )

    assert (passed.status_code, passed.code) == (400, "DryRunOperation"), support.describe(passed)
    assert "would run on 2 instances" in passed.data.get("Message", ""), support.describe(passed)
    assert (unknown.status_code, unknown.code) == (404, "InvalidInstance.NotFound"), support.describe(unknown)


def test_describe_instances_and_managed_instances_filter_by_tag(ecs, hz, tagged):
    key, value = tagged

    instances = ecs.describe_instances(
        m.DescribeInstancesRequest(region_id=HZ, tag=[m.DescribeInstancesRequestTag(key=key, value=value)])
    ).body
    by_key = ecs.describe_managed_instances(
        m.DescribeManagedInstancesRequest(region_id=HZ, tag=[m.DescribeManagedInstancesRequestTag(key=key)])
    ).body

    assert [i.instance_id for i in instances.instances.instance] == [hz[0]]
    assert instances.total_count == 1
    assert [(t.tag_key, t.tag_value) for t in instances.instances.instance[0].tags.tag] == [(key, value)]
    assert [i.instance_id for i in by_key.instances] == [hz[0]]
