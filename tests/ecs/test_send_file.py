"""SendFile and DescribeSendFileResults through the official Python SDK: inline content (plain
or Base64) put in place on real agents with its mode, per-instance results in Alibaba's shape,
and the refusals made before anything is sent."""

from __future__ import annotations

import os
import tempfile

import pytest
from alibabacloud_ecs20140526 import models as m

import support
from support import HZ, b64


def describe(ecs, invoke_id: str):
    request = m.DescribeSendFileResultsRequest(region_id=HZ, invoke_id=invoke_id)
    return ecs.describe_send_file_results(request).body


def test_send_file_puts_the_content_in_place_and_each_instance_reports(ecs, hz):
    target = tempfile.mkdtemp(prefix="fleetrun-sendfile-")
    content = "key = välue ✓\n"
    request = m.SendFileRequest(
        region_id=HZ,
        instance_id=hz,
        name="app.conf",
        target_dir=target,
        content=b64(content),
        content_type="Base64",
        file_mode="0640",
        overwrite=True,
        timeout=30,
    )
    invoke_id = ecs.send_file(request).body.invoke_id

    def final():
        body = describe(ecs, invoke_id)
        row = body.invocations.invocation[0]
        return body if row.invocation_status in ("Success", "Failed", "PartialFailed") else None

    body = support.eventually(final, f"send {invoke_id} to finish")
    row = body.invocations.invocation[0]
    assert body.total_count == 1
    assert (row.invoke_id, row.name, row.target_dir, row.file_mode) == (invoke_id, "app.conf", target, "0640")
    assert row.invocation_status == "Success", row.to_map()
    assert row.overwrite == "true" and row.vm_count == len(hz)
    instances = row.invoke_instances.invoke_instance
    assert sorted(i.instance_id for i in instances) == sorted(hz)
    for instance in instances:
        assert instance.invocation_status == "Success" and instance.error_code == "", instance.to_map()
        assert instance.start_time and instance.finish_time
    path = os.path.join(target, "app.conf")
    with open(path, "rb") as f:
        assert f.read() == content.encode()
    assert os.stat(path).st_mode & 0o7777 == 0o640


def test_overwrite_off_fails_per_instance_with_file_already_exists(ecs, hz):
    target = tempfile.mkdtemp(prefix="fleetrun-sendfile-")
    with open(os.path.join(target, "keep.txt"), "w") as f:
        f.write("old\n")
    request = m.SendFileRequest(region_id=HZ, instance_id=hz[:1], name="keep.txt", target_dir=target, content="new\n")
    invoke_id = ecs.send_file(request).body.invoke_id

    def final():
        row = describe(ecs, invoke_id).invocations.invocation[0]
        return row if row.invocation_status == "Failed" else None

    row = support.eventually(final, "the send to fail")
    assert row.invoke_instances.invoke_instance[0].error_code == "FileAlreadyExists"
    with open(os.path.join(target, "keep.txt")) as f:
        assert f.read() == "old\n"


@pytest.mark.parametrize(
    "change, code",
    [
        ({"target_dir": "relative/dir"}, "InvalidParameter.TargetDir"),
        ({"name": "../escape"}, "InvalidParameter.Name"),
        ({"content": "x" * (32 * 1024 + 1)}, "InvalidParameter.Content"),
        ({"file_mode": "rwxr-xr-x"}, "InvalidParameter.FileMode"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_sent(ecs, hz, change, code):
    fields = dict(region_id=HZ, instance_id=hz[:1], name="x.txt", target_dir="/tmp/fleetrun-never", content="x")
    fields.update(change)
    with pytest.raises(Exception) as refused:
        ecs.send_file(m.SendFileRequest(**fields))
    assert getattr(refused.value, "code", None) == code, refused.value
