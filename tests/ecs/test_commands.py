"""Retained commands through the official Python SDK, in both signature modes: CreateCommand,
DescribeCommands, ModifyCommand, InvokeCommand, DeleteCommand, and the per-region quota."""

from __future__ import annotations

import pytest
from alibabacloud_ecs20140526 import models as m

import support
from support import EU, HZ, b64, unb64


def describe_one(ecs, command_id: str, **extra):
    body = ecs.describe_commands(m.DescribeCommandsRequest(region_id=HZ, command_id=command_id, **extra)).body
    assert body.total_count == 1, body.to_map()
    return body.commands.command[0]


def test_create_describe_modify_and_delete_a_command(ecs):
    name = support.unique("cmd")
    content = "echo {{greeting}} from {{fleetrun::instance_id}}"

    created = ecs.create_command(
        m.CreateCommandRequest(
            region_id=HZ,
            name=name,
            type="RunShellScript",
            command_content=b64(content),
            description="made by the SDK",
            enable_parameter=True,
            timeout=120,
            working_dir="/tmp",
        )
    ).body
    as_base64 = describe_one(ecs, created.command_id)
    as_plain = describe_one(ecs, created.command_id, content_encoding="PlainText")
    ecs.modify_command(
        m.ModifyCommandRequest(
            region_id=HZ, command_id=created.command_id, name=name + "-2", description="changed", timeout=30
        )
    )
    modified = describe_one(ecs, created.command_id, content_encoding="PlainText")
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=created.command_id))
    after = ecs.describe_commands(m.DescribeCommandsRequest(region_id=HZ, command_id=created.command_id)).body

    assert created.command_id.startswith("c-")
    assert as_base64.name == name
    assert unb64(as_base64.command_content).decode() == content
    assert as_plain.command_content == content
    assert as_plain.type == "RunShellScript"
    assert as_plain.description == "made by the SDK"
    assert as_plain.timeout == 120
    assert as_plain.working_dir == "/tmp"
    assert as_plain.enable_parameter is True
    assert as_plain.parameter_names.parameter_name == ["greeting"]
    assert as_plain.invoke_times == 0
    assert as_plain.creation_time
    assert (modified.name, modified.description, modified.timeout) == (name + "-2", "changed", 30)
    assert modified.command_content == content
    assert after.total_count == 0
    assert after.commands.command == []


def test_create_command_takes_plain_text_when_told(ecs):
    created = ecs.create_command(
        m.CreateCommandRequest(
            region_id=HZ,
            name=support.unique("plain"),
            type="RunShellScript",
            command_content="echo plain ✓",
            content_encoding="PlainText",
        )
    ).body
    command = describe_one(ecs, created.command_id, content_encoding="PlainText")
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=created.command_id))

    assert command.command_content == "echo plain ✓"


def test_invoke_command_runs_a_retained_command_with_parameters(ecs, hz):
    created = ecs.create_command(
        m.CreateCommandRequest(
            region_id=HZ,
            name=support.unique("invoke"),
            type="RunShellScript",
            command_content=b64("echo {{greeting}} from {{fleetrun::instance_id}}"),
            enable_parameter=True,
        )
    ).body

    invoke_id = ecs.invoke_command(
        m.InvokeCommandRequest(
            region_id=HZ, command_id=created.command_id, instance_id=hz, parameters={"greeting": "hi there"}
        )
    ).body.invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 2, content_encoding="PlainText")
    command = describe_one(ecs, created.command_id)
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=created.command_id))

    for row in rows:
        assert row.invocation_status == "Success", row.to_map()
        assert row.output == f"hi there from {row.instance_id}\n"
        assert row.command_id == created.command_id
    assert command.invoke_times == 1


def test_a_deleted_command_is_not_found(ecs):
    created = ecs.create_command(
        m.CreateCommandRequest(
            region_id=HZ, name=support.unique("gone"), type="RunShellScript", command_content=b64("true")
        )
    ).body
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=created.command_id))

    again = support.refusal(
        lambda: ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=created.command_id))
    )
    invoke = support.refusal(
        lambda: ecs.invoke_command(
            m.InvokeCommandRequest(region_id=HZ, command_id=created.command_id, instance_id=["i-doesnotexist"])
        )
    )

    assert (again.status_code, again.code) == (404, "InvalidCommandId.NotFound"), support.describe(again)
    assert invoke.status_code == 404, support.describe(invoke)


def test_a_command_name_is_unique_in_its_region(ecs):
    name = support.unique("dup")
    request = m.CreateCommandRequest(region_id=HZ, name=name, type="RunShellScript", command_content=b64("true"))
    first = ecs.create_command(request).body

    second = support.refusal(lambda: ecs.create_command(request))
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=first.command_id))

    assert second.status_code in (400, 409), support.describe(second)
    assert "Duplicate" in second.code, support.describe(second)


def test_the_retained_command_quota_refuses_the_command_past_it(server, operator_key, admin, eu):
    """run.sh starts the demo with FLEETRUN_RETAINED_COMMAND_QUOTA small, so the quota can be
    filled here (in eu-central-1, where no other test keeps commands)."""
    ecs = support.tea(server, operator_key)
    quotas = admin.get("/quotas")["quotas"]
    quota = next((q for q in quotas if q["name"] == "retained_commands" and q.get("region_id") == EU), None)
    limit = quota["limit"] if quota else None
    if limit is None or limit > 50:
        pytest.skip(f"the retained-command quota of {EU} is {limit}; run.sh sets it small to test it")
    made = []
    for _ in range(limit - quota["used"]):
        made.append(
            ecs.create_command(
                m.CreateCommandRequest(
                    region_id=EU, name=support.unique("quota"), type="RunShellScript", command_content=b64("true")
                )
            ).body.command_id
        )
    count_before = admin.invocation_count()

    create = support.refusal(
        lambda: ecs.create_command(
            m.CreateCommandRequest(
                region_id=EU, name=support.unique("over"), type="RunShellScript", command_content=b64("true")
            )
        )
    )
    kept_run = support.refusal(
        lambda: support.run(ecs, EU, eu[:1], "echo over", keep_command=True, name=support.unique("over"))
    )
    total = ecs.describe_commands(m.DescribeCommandsRequest(region_id=EU)).body.total_count
    count_after = admin.invocation_count()
    for command_id in made:
        ecs.delete_command(m.DeleteCommandRequest(region_id=EU, command_id=command_id))
    room_again = ecs.create_command(
        m.CreateCommandRequest(region_id=EU, name=support.unique("room"), type="RunShellScript", command_content=b64("true"))
    ).body.command_id
    ecs.delete_command(m.DeleteCommandRequest(region_id=EU, command_id=room_again))

    for refused in (create, kept_run):
        assert refused.status_code in (400, 403), support.describe(refused)
        assert "Quota" in refused.code, support.describe(refused)
    assert total == limit
    assert count_after == count_before, "a RunCommand refused for the quota stored an invocation"
