"""The Describe* actions through the official Python SDK, in both signature modes: what each
answers and pagination both ways (PageNumber/PageSize and MaxResults/NextToken)."""

from __future__ import annotations

import secrets

import pytest
from alibabacloud_ecs20140526 import models as m

import support
from support import EU, HZ, b64, unb64

PAGING_REGION = "ecs-paging-1"
PAGING_INSTANCES = 12


@pytest.fixture(scope="session")
def paging_instances(server, admin):
    """Twelve registered (never connected) instances in a region of their own, enough to page
    DescribeInstances whatever PageSize floor the server applies; deregistered at the end."""
    activation = admin.post(
        "/activations", {"region_id": PAGING_REGION, "instance_count_limit": PAGING_INSTANCES, "ttl_hours": 1}
    )
    ids = []
    for n in range(PAGING_INSTANCES):
        registered = admin.http.post(
            f"{server.url}/agent/v1/register",
            json={
                "activation_id": activation["activation_id"],
                "activation_code": activation["activation_code"],
                "hostname": f"paging-{n}",
                "os_type": "linux",
                "os_name": "Test Linux",
                "ip_addresses": [f"192.0.2.{n + 1}"],
                "agent_version": "0.0.0-test",
            },
            timeout=30,
        )
        assert registered.status_code == 201, registered.text
        ids.append(registered.json()["instance_id"])
    yield sorted(ids)
    for instance_id in ids:
        admin.call("DELETE", f"/instances/{instance_id}")


def test_describe_invocations_shows_the_run_and_its_instances(ecs, hz):
    content = "echo invocations ✓"
    invoke_id = support.run(ecs, HZ, hz, content, name=support.unique("named-run")).invoke_id
    support.wait_finished(ecs, HZ, invoke_id, 2)

    default = ecs.describe_invocations(m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id)).body
    with_output = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id, include_output=True)
    ).body
    plain = ecs.describe_invocations(
        m.DescribeInvocationsRequest(
            region_id=HZ, invoke_id=invoke_id, include_output=True, content_encoding="PlainText"
        )
    ).body

    assert default.total_count == 1
    invocation = default.invocations.invocation[0]
    assert invocation.invoke_id == invoke_id
    assert invocation.command_type == "RunShellScript"
    assert unb64(invocation.command_content).decode() == content
    assert invocation.invocation_status == "Success"
    assert invocation.invoke_status == "Finished"
    assert invocation.timeout == 60
    assert invocation.creation_time
    assert invocation.repeat_mode in ("Once", None, "")
    instances = invocation.invoke_instances.invoke_instance
    assert sorted(i.instance_id for i in instances) == hz
    for row in instances:
        assert row.invocation_status == "Success"
        assert row.exit_code == 0
        assert row.finish_time
    assert [unb64(i.output) for i in with_output.invocations.invocation[0].invoke_instances.invoke_instance] == [
        (content[5:] + "\n").encode()
    ] * 2
    plain_invocation = plain.invocations.invocation[0]
    assert plain_invocation.command_content == content
    assert [i.output for i in plain_invocation.invoke_instances.invoke_instance] == [content[5:] + "\n"] * 2


def test_describe_invocations_answers_the_last_24_kib_of_output_and_results_all_of_it(ecs, hz):
    # 40,000 bytes: the numbers 10000..17999, one per line ("10000\n" is 6 bytes, x 8,000 = 48,000).
    content = "seq 10000 17999"
    invoke_id = support.run(ecs, HZ, hz[:1], content).invoke_id
    support.wait_finished(ecs, HZ, invoke_id, 1)
    whole = b"".join(f"{n}\n".encode() for n in range(10000, 18000))

    body = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id, include_output=True)
    ).body
    row = body.invocations.invocation[0].invoke_instances.invoke_instance[0]
    assert unb64(row.output) == whole[-24 * 1024 :]
    assert row.dropped == len(whole) - 24 * 1024

    result = support.results(ecs, HZ, invoke_id)[0]
    assert unb64(result.output) == whole
    assert result.dropped == 0


def test_describe_invocations_pages_both_ways(ecs, eu):
    mine = set()
    for n in range(3):
        mine.add(support.run(ecs, EU, eu[:1], f"echo page {n}").invoke_id)
    for invoke_id in mine:
        support.wait_finished(ecs, EU, invoke_id, 1)

    def by_number(page):
        body = ecs.describe_invocations(
            m.DescribeInvocationsRequest(region_id=EU, instance_id=eu[0], page_number=page, page_size=2)
        ).body
        assert body.page_number == page
        return [i.invoke_id for i in body.invocations.invocation], body.total_count, body.page_size

    def by_token(token):
        body = ecs.describe_invocations(
            m.DescribeInvocationsRequest(region_id=EU, instance_id=eu[0], max_results=2, next_token=token)
        ).body
        return [i.invoke_id for i in body.invocations.invocation], body.next_token

    numbered, number_pages = support.pages_by_number(by_number)
    tokened, token_pages = support.pages_by_token(by_token)

    assert number_pages >= 2 and token_pages >= 2
    assert len(set(numbered)) == len(numbered), "a PageNumber walk repeated an invocation"
    assert len(set(tokened)) == len(tokened), "a NextToken walk repeated an invocation"
    assert set(numbered) == set(tokened)
    assert mine <= set(numbered)


def test_describe_invocation_results_pages_both_ways(ecs, hz):
    invoke_id = support.run(ecs, HZ, hz, "echo rows").invoke_id
    support.wait_finished(ecs, HZ, invoke_id, 2)

    def by_number(page):
        body = ecs.describe_invocation_results(
            m.DescribeInvocationResultsRequest(region_id=HZ, invoke_id=invoke_id, page_number=page, page_size=1)
        ).body.invocation
        return [r.instance_id for r in body.invocation_results.invocation_result], body.total_count, body.page_size

    def by_token(token):
        body = ecs.describe_invocation_results(
            m.DescribeInvocationResultsRequest(region_id=HZ, invoke_id=invoke_id, max_results=1, next_token=token)
        ).body.invocation
        return [r.instance_id for r in body.invocation_results.invocation_result], body.next_token

    numbered, number_pages = support.pages_by_number(by_number)
    tokened, token_pages = support.pages_by_token(by_token)
    one_instance = support.results(ecs, HZ, invoke_id, instance_id=hz[1])

    assert sorted(numbered) == hz and number_pages == 2
    assert sorted(tokened) == hz and token_pages == 2
    assert [r.instance_id for r in one_instance] == [hz[1]]


def test_describe_commands_pages_both_ways(ecs):
    made = [
        ecs.create_command(
            m.CreateCommandRequest(
                region_id=HZ, name=support.unique("paged"), type="RunShellScript", command_content=b64("true")
            )
        ).body.command_id
        for _ in range(3)
    ]

    def by_number(page):
        body = ecs.describe_commands(m.DescribeCommandsRequest(region_id=HZ, page_number=page, page_size=2)).body
        return [c.command_id for c in body.commands.command], body.total_count, body.page_size

    def by_token(token):
        body = ecs.describe_commands(m.DescribeCommandsRequest(region_id=HZ, max_results=2, next_token=token)).body
        return [c.command_id for c in body.commands.command], body.next_token

    numbered, number_pages = support.pages_by_number(by_number)
    tokened, token_pages = support.pages_by_token(by_token)
    for command_id in made:
        ecs.delete_command(m.DeleteCommandRequest(region_id=HZ, command_id=command_id))

    assert number_pages >= 2 and token_pages >= 2
    assert len(set(numbered)) == len(numbered) and len(set(tokened)) == len(tokened)
    assert set(numbered) == set(tokened)
    assert set(made) <= set(numbered)


def test_describe_instances_lists_the_region_s_instances(ecs, admin, hz):
    listed = {i["instance_id"]: i for i in admin.instances(HZ)}

    body = ecs.describe_instances(m.DescribeInstancesRequest(region_id=HZ, page_size=100)).body
    one = ecs.describe_instances(m.DescribeInstancesRequest(region_id=HZ, instance_ids=support.dumps([hz[1]]))).body
    none = ecs.describe_instances(
        m.DescribeInstancesRequest(region_id=HZ, instance_ids=support.dumps(["i-doesnotexist"]))
    ).body

    assert body.total_count == len(listed)
    assert sorted(i.instance_id for i in body.instances.instance) == sorted(listed)
    for instance in body.instances.instance:
        ours = listed[instance.instance_id]
        assert instance.region_id == HZ
        assert instance.instance_name == ours["name"]
        assert instance.host_name == ours["hostname"]
        if instance.instance_id in hz:
            assert instance.status == "Running"
        assert instance.creation_time
    assert [i.instance_id for i in one.instances.instance] == [hz[1]]
    assert one.total_count == 1
    assert none.total_count == 0 and none.instances.instance == []


def test_describe_instances_pages_both_ways(ecs, paging_instances):
    def by_number(page):
        body = ecs.describe_instances(
            m.DescribeInstancesRequest(region_id=PAGING_REGION, page_number=page, page_size=5)
        ).body
        return [i.instance_id for i in body.instances.instance], body.total_count, body.page_size

    def by_token(token):
        body = ecs.describe_instances(
            m.DescribeInstancesRequest(region_id=PAGING_REGION, max_results=5, next_token=token)
        ).body
        return [i.instance_id for i in body.instances.instance], body.next_token

    numbered, number_pages = support.pages_by_number(by_number)
    tokened, token_pages = support.pages_by_token(by_token)

    assert sorted(numbered) == paging_instances and number_pages >= 2
    assert sorted(tokened) == paging_instances and token_pages >= 2


def test_describe_cloud_assistant_status_tells_online_from_offline(ecs, hz, paging_instances):
    online = ecs.describe_cloud_assistant_status(
        m.DescribeCloudAssistantStatusRequest(region_id=HZ, instance_id=hz)
    ).body
    offline = ecs.describe_cloud_assistant_status(
        m.DescribeCloudAssistantStatusRequest(region_id=PAGING_REGION, instance_id=paging_instances[:2])
    ).body

    rows = online.instance_cloud_assistant_status_set.instance_cloud_assistant_status
    assert sorted(r.instance_id for r in rows) == hz
    for row in rows:
        assert row.cloud_assistant_status == "true"
        assert row.cloud_assistant_version
        assert row.last_heartbeat_time
        assert row.ostype.lower() == "linux"
    assert online.total_count == 2
    gone = offline.instance_cloud_assistant_status_set.instance_cloud_assistant_status
    assert sorted(r.instance_id for r in gone) == paging_instances[:2]
    assert all(r.cloud_assistant_status == "false" for r in gone)


def test_describe_cloud_assistant_status_pages_both_ways(ecs, paging_instances):
    def by_number(page):
        body = ecs.describe_cloud_assistant_status(
            m.DescribeCloudAssistantStatusRequest(region_id=PAGING_REGION, page_number=page, page_size=5)
        ).body
        rows = body.instance_cloud_assistant_status_set.instance_cloud_assistant_status
        return [r.instance_id for r in rows], body.total_count, body.page_size

    def by_token(token):
        body = ecs.describe_cloud_assistant_status(
            m.DescribeCloudAssistantStatusRequest(region_id=PAGING_REGION, max_results=5, next_token=token)
        ).body
        rows = body.instance_cloud_assistant_status_set.instance_cloud_assistant_status
        return [r.instance_id for r in rows], body.next_token

    numbered, _ = support.pages_by_number(by_number)
    tokened, _ = support.pages_by_token(by_token)

    assert sorted(numbered) == paging_instances
    assert sorted(tokened) == paging_instances


def test_describe_regions_lists_the_fleet_s_regions(ecs):
    body = ecs.describe_regions(m.DescribeRegionsRequest()).body

    regions = {r.region_id: r for r in body.regions.region}
    assert {HZ, EU} <= set(regions)
    assert all(r.status == "available" for r in regions.values())
    assert body.request_id


def test_an_unknown_next_token_is_refused(ecs):
    refused = support.refusal(
        lambda: ecs.describe_invocations(
            m.DescribeInvocationsRequest(region_id=HZ, max_results=2, next_token=secrets.token_hex(8))
        )
    )

    assert refused.status_code == 400, support.describe(refused)
    assert refused.code.startswith("InvalidParameter") or refused.code.startswith("InvalidNextToken"), (
        support.describe(refused)
    )
