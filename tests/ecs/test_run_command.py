"""RunCommand and StopInvocation through the official Python SDK, in both signature modes:
output encodings, content encodings, parameters, retained commands, failure and stop."""

from __future__ import annotations

from alibabacloud_ecs20140526 import models as m

import support
from support import HZ, b64, unb64


def test_output_is_base64_by_default_and_plain_text_on_request(ecs, hz):
    expected = "héllo wörld ✓\nsecond line\n"

    invoke_id = support.run(ecs, HZ, hz, "printf 'héllo wörld ✓\\nsecond line\\n'").invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 2)
    plain = support.results(ecs, HZ, invoke_id, content_encoding="PlainText")

    assert invoke_id.startswith("t-")
    assert sorted(r.instance_id for r in rows) == hz
    for row in rows:
        assert row.invoke_id == invoke_id
        assert row.invocation_status == "Success", row.to_map()
        assert row.exit_code == 0
        assert row.error_code in ("", None)
        assert unb64(row.output) == expected.encode()
        assert row.dropped == 0
        assert row.start_time and row.finished_time
    assert [r.output for r in plain] == [expected, expected]


def test_command_content_may_be_sent_base64(ecs, hz):
    content = b64("echo content sent as base64 ✓")

    invoke_id = support.run(ecs, HZ, hz[:1], content, content_encoding="Base64").invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 1, content_encoding="PlainText")

    assert rows[0].invocation_status == "Success", rows[0].to_map()
    assert rows[0].output == "content sent as base64 ✓\n"


def test_parameters_fill_their_placeholders_and_the_built_ins(ecs, hz):
    content = "echo hello {{who}} from {{fleetrun::instance_id}}"

    invoke_id = support.run(
        ecs, HZ, hz, content, enable_parameter=True, parameters={"who": "Jack Smith"}
    ).invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 2, content_encoding="PlainText")

    for row in rows:
        assert row.invocation_status == "Success", row.to_map()
        assert row.output == f"hello Jack Smith from {row.instance_id}\n"


def test_placeholders_are_left_alone_without_enable_parameter(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz[:1], "echo '{{who}}'").invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 1, content_encoding="PlainText")

    assert rows[0].output == "{{who}}\n"


def test_a_failing_command_ends_failed_with_its_exit_code(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz[:1], "echo to stderr >&2; exit 3").invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 1, content_encoding="PlainText")
    invocation = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id)
    ).body.invocations.invocation[0]

    assert rows[0].invocation_status == "Failed"
    assert rows[0].exit_code == 3
    assert rows[0].error_code == "ExitCodeNonzero"
    assert "to stderr" in rows[0].output
    assert invocation.invocation_status == "Failed"


def test_keep_command_retains_a_command_that_describe_commands_shows(ecs, hz):
    name = support.unique("kept")

    answer = support.run(ecs, HZ, hz[:1], "echo kept", keep_command=True, name=name, description="kept by RunCommand")
    support.wait_finished(ecs, HZ, answer.invoke_id, 1)
    commands = ecs.describe_commands(
        m.DescribeCommandsRequest(region_id=HZ, command_id=answer.command_id, content_encoding="PlainText")
    ).body
    ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=answer.command_id))

    assert answer.command_id.startswith("c-")
    assert commands.total_count == 1
    command = commands.commands.command[0]
    assert command.command_id == answer.command_id
    assert command.name == name
    assert command.description == "kept by RunCommand"
    assert command.type == "RunShellScript"
    assert command.command_content == "echo kept"
    assert command.invoke_times == 1


def test_a_run_without_keep_command_leaves_no_command_behind(ecs, hz):
    answer = support.run(ecs, HZ, hz[:1], "echo not kept")
    support.wait_finished(ecs, HZ, answer.invoke_id, 1)

    if answer.command_id:
        commands = ecs.describe_commands(m.DescribeCommandsRequest(region_id=HZ, command_id=answer.command_id))
        assert commands.body.total_count == 0
        assert commands.body.commands.command == []


def test_stop_invocation_terminates_a_running_command(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz, "echo started; sleep 600", timeout=900).invoke_id
    support.eventually(
        lambda: all(r.invocation_status == "Running" for r in support.results(ecs, HZ, invoke_id))
        and len(support.results(ecs, HZ, invoke_id)) == 2,
        "both instances to be Running",
    )

    ecs.stop_invocation(m.StopInvocationRequest(region_id=HZ, invoke_id=invoke_id))
    rows = support.wait_finished(ecs, HZ, invoke_id, 2, content_encoding="PlainText")
    invocation = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id)
    ).body.invocations.invocation[0]

    for row in rows:
        assert row.invocation_status == "Terminated", row.to_map()
        assert row.stop_time
        assert row.output.startswith("started\n")
    assert invocation.invocation_status == "Stopped"


def test_stop_invocation_may_name_one_instance(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz, "sleep 600", timeout=900).invoke_id
    support.eventually(
        lambda: [r.invocation_status for r in support.results(ecs, HZ, invoke_id)] == ["Running", "Running"],
        "both instances to be Running",
    )

    ecs.stop_invocation(m.StopInvocationRequest(region_id=HZ, invoke_id=invoke_id, instance_id=[hz[0]]))
    support.eventually(
        lambda: {r.instance_id: r.invocation_status for r in support.results(ecs, HZ, invoke_id)}.get(hz[0])
        == "Terminated",
        f"{hz[0]} to be Terminated",
    )
    still = {r.instance_id: r.invocation_status for r in support.results(ecs, HZ, invoke_id)}
    ecs.stop_invocation(m.StopInvocationRequest(region_id=HZ, invoke_id=invoke_id))
    support.wait_finished(ecs, HZ, invoke_id, 2)

    assert still[hz[1]] == "Running"


def test_a_frequency_schedules_the_command_and_stop_invocation_ends_the_schedule(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz[:1], "echo on a schedule", frequency="rate(5m)").invoke_id

    def described():
        return ecs.describe_invocations(
            m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id)
        ).body.invocations.invocation[0]

    scheduled = described()
    listed = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_status="Scheduled", repeat_mode="Period")
    ).body.invocations.invocation
    ecs.stop_invocation(m.StopInvocationRequest(region_id=HZ, invoke_id=invoke_id))
    stopped = described()

    # RepeatMode defaults to Period when a Frequency is given, as Alibaba's does.
    assert scheduled.repeat_mode == "Period"
    assert scheduled.frequency == "rate(5m)"
    assert scheduled.invocation_status == "Scheduled"
    assert scheduled.invoke_status == "Running", "Alibaba's scheduled tasks stay Running until stopped"
    assert invoke_id in [i.invoke_id for i in listed]
    assert stopped.invocation_status == "Stopped"
