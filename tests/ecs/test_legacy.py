"""The legacy Python SDK (`aliyun-python-sdk-core` AcsClient with `aliyun-python-sdk-ecs` request
classes), which signs only with RPC V1 and reads errors its own way (research §7)."""

from __future__ import annotations

import json

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkecs.request.v20140526.DescribeInstancesRequest import DescribeInstancesRequest
from aliyunsdkecs.request.v20140526.DescribeInvocationResultsRequest import DescribeInvocationResultsRequest
from aliyunsdkecs.request.v20140526.DescribeInvocationsRequest import DescribeInvocationsRequest
from aliyunsdkecs.request.v20140526.RunCommandRequest import RunCommandRequest
from aliyunsdkecs.request.v20140526.StopInvocationRequest import StopInvocationRequest

import support
from support import HZ


@pytest.fixture
def legacy(server, operator_key):
    return Legacy(server, AcsClient(operator_key.id, operator_key.secret, HZ, auto_retry=False))


class Legacy:
    """An AcsClient and the endpoint every request is sent to."""

    def __init__(self, server, client: AcsClient):
        self.server = server
        self.client = client

    def call(self, request) -> dict:
        request.set_endpoint(self.server.endpoint)
        return json.loads(self.client.do_action_with_exception(request))

    def run(self, instance_ids, content, parameters=None, timeout=60) -> str:
        request = RunCommandRequest()
        request.set_Type("RunShellScript")
        request.set_CommandContent(content)
        request.set_InstanceIds(instance_ids)
        request.set_Timeout(timeout)
        if parameters is not None:
            request.set_EnableParameter(True)
            request.set_Parameters(json.dumps(parameters))
        return self.call(request)["InvokeId"]

    def results(self, invoke_id, **setters) -> list[dict]:
        request = DescribeInvocationResultsRequest()
        request.set_InvokeId(invoke_id)
        for name, value in setters.items():
            getattr(request, f"set_{name}")(value)
        return self.call(request)["Invocation"]["InvocationResults"]["InvocationResult"]

    def wait_finished(self, invoke_id, count, **setters) -> list[dict]:
        def finished():
            rows = self.results(invoke_id, **setters)
            if len(rows) == count and all(r["InvocationStatus"] in support.TERMINAL for r in rows):
                return rows
            return None

        return support.eventually(finished, f"{invoke_id} to finish")


def test_run_command_and_its_results_through_the_legacy_sdk(legacy, hz):
    invoke_id = legacy.run(hz, "echo hello {{who}} ✓", parameters={"who": "legacy"})
    rows = legacy.wait_finished(invoke_id, 2, ContentEncoding="PlainText")
    base64_rows = legacy.results(invoke_id)

    assert sorted(r["InstanceId"] for r in rows) == hz
    for row in rows:
        assert row["InvocationStatus"] == "Success"
        assert row["ExitCode"] == 0
        assert row["Output"] == "hello legacy ✓\n"
    assert [support.unb64(r["Output"]).decode() for r in base64_rows] == ["hello legacy ✓\n"] * 2


def test_stop_invocation_through_the_legacy_sdk(legacy, hz):
    invoke_id = legacy.run(hz[:1], "sleep 600", timeout=900)
    support.eventually(
        lambda: [r["InvocationStatus"] for r in legacy.results(invoke_id)] == ["Running"], "the sleep to run"
    )

    stop = StopInvocationRequest()
    stop.set_InvokeId(invoke_id)
    legacy.call(stop)
    rows = legacy.wait_finished(invoke_id, 1)
    described = DescribeInvocationsRequest()
    described.set_InvokeId(invoke_id)
    invocation = legacy.call(described)["Invocations"]["Invocation"][0]

    assert rows[0]["InvocationStatus"] == "Terminated"
    assert invocation["InvocationStatus"] == "Stopped"


def test_describe_instances_through_the_legacy_sdk(legacy, hz):
    request = DescribeInstancesRequest()
    request.set_InstanceIds(json.dumps(hz))

    body = legacy.call(request)

    assert sorted(i["InstanceId"] for i in body["Instances"]["Instance"]) == hz
    assert body["TotalCount"] == 2


def test_an_unknown_instance_is_a_server_exception_with_its_code(legacy, admin):
    before = admin.invocation_count()

    with pytest.raises(ServerException) as refused:
        legacy.run(["i-doesnotexist"], "echo never")

    assert refused.value.get_error_code() == "InvalidInstance.NotFound"
    assert refused.value.get_http_status() == 404
    assert refused.value.get_request_id()
    assert admin.invocation_count() == before


def test_a_wrong_secret_is_refused_without_crashing_the_legacy_sdk(server, operator_key, admin, hz):
    # The legacy SDK evaluates Message.split(':')[1] for SignatureDoesNotMatch: a message without a
    # colon raises IndexError inside it. When the server's string-to-sign equals its own, it
    # rewrites the code to InvalidAccessKeySecret.
    wrong = Legacy(server, AcsClient(operator_key.id, "not-the-secret", HZ, auto_retry=False))
    before = admin.invocation_count()

    with pytest.raises(ServerException) as refused:
        wrong.run(hz, "echo never")

    assert refused.value.get_error_code() in ("SignatureDoesNotMatch", "InvalidAccessKeySecret")
    assert refused.value.get_http_status() == 400
    assert admin.invocation_count() == before


def test_a_viewer_s_key_is_forbidden_in_the_legacy_sdk(server, viewer_key, hz):
    viewer = Legacy(server, AcsClient(viewer_key.id, viewer_key.secret, HZ, auto_retry=False))

    with pytest.raises(ServerException) as refused:
        viewer.run(hz, "echo never")

    assert (refused.value.get_http_status(), refused.value.get_error_code()) == (403, "Forbidden.RAM")

