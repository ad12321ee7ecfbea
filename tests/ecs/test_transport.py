"""The HTTP surface beyond what the Python SDKs send: GET and form-body POST signed as the Go SDK and
the `aliyun` CLI sign them (RPC V1), long query strings, and the console still answering a
browser at `/`."""

from __future__ import annotations

import requests
from alibabacloud_ecs20140526 import models as m

import support
from support import HZ


def test_a_get_request_signed_with_rpc_v1_is_answered(server, operator_key, hz):
    params = support.sign_rpc_v1(
        {"Action": "DescribeInstances", "RegionId": HZ, "InstanceIds": support.dumps(hz)}, operator_key, "GET"
    )

    response = requests.get(f"{server.url}/", params=params, timeout=30)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["RequestId"]
    assert sorted(i["InstanceId"] for i in body["Instances"]["Instance"]) == hz


def post_form(server, query: dict, form: dict) -> requests.Response:
    return requests.post(
        f"{server.url}/",
        params=query,
        data=form,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )


def test_a_post_with_its_parameters_in_a_form_body_runs_a_command(server, operator_key, hz):
    # As the Go SDK and the CLI send it: the common parameters in the query, the action's in the
    # body, all of them signed.
    form = {"RegionId": HZ, "Type": "RunShellScript", "CommandContent": "echo from a form body ✓", "InstanceId.1": hz[0]}
    query = support.sign_rpc_v1({"Action": "RunCommand"}, operator_key, "POST", form=form)

    response = post_form(server, query, form)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    invoke_id = response.json()["InvokeId"]
    rows = support.wait_finished(support.tea(server, operator_key), HZ, invoke_id, 1, content_encoding="PlainText")

    assert rows[0].output == "from a form body ✓\n"


def test_an_action_named_only_in_the_form_body_is_the_ecs_api(server, operator_key):
    # Issue 13: a request to / that carries Action in the query *or the form* is the ECS API.
    form = {"Action": "DescribeRegions"}
    query = support.sign_rpc_v1({}, operator_key, "POST", form=form)

    response = post_form(server, query, form)

    assert response.status_code == 200, f"{response.status_code} {response.headers.get('content-type')} {response.text[:300]}"
    assert {"cn-hangzhou", "eu-central-1"} <= {r["RegionId"] for r in response.json()["Regions"]["Region"]}


def test_a_long_command_content_travels_in_the_query_string(ecs, hz):
    # About 20 KiB of script, close to the SDK's 24 KB Base64 limit; percent-encoded in the URL.
    lines = [f"echo 'line {n:04d} ✓ {'x' * 24}' >/dev/null" for n in range(450)]
    content = "\n".join(lines) + "\necho done\n"
    assert len(content.encode()) > 20_000

    invoke_id = support.run(ecs, HZ, hz[:1], support.b64(content), content_encoding="Base64").invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 1, content_encoding="PlainText")
    described = ecs.describe_invocations(
        m.DescribeInvocationsRequest(region_id=HZ, invoke_id=invoke_id, content_encoding="PlainText")
    ).body.invocations.invocation[0]

    assert rows[0].output == "done\n"
    assert described.command_content == content


def test_a_browser_at_the_root_still_gets_the_console(server):
    response = requests.get(f"{server.url}/", allow_redirects=False, timeout=30)

    assert response.status_code in (200, 302, 303, 307), response.status_code
    assert "application/json" not in response.headers.get("content-type", "")


def test_an_unsigned_ecs_request_is_refused_as_json(server):
    response = requests.post(f"{server.url}/", params={"Action": "DescribeRegions"}, timeout=30)

    assert 400 <= response.status_code < 500
    body = response.json()
    assert body["Code"] and body["Message"] and body["RequestId"]
