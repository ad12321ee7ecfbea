"""Issue 13's acceptance: a RunCommand sent through the SDK is the same execution record the JSON
API, the audit log and the console's Execution Records show, with the key's user, and its output
through DescribeInvocationResults is byte-identical to the JSON API's."""

from __future__ import annotations

import re

import requests

import support
from support import HZ

# Several lines, non-ASCII text, a tab and no trailing newline on the last line.
SCRIPT = r"""printf 'première ligne ✓\n第二行\n\tταβ	end\n'; printf 'ünïcødé without newline'"""


def test_a_run_through_the_sdk_is_the_same_record_everywhere(server, admin, operator, ecs, hz):
    invoke_id = support.run(ecs, HZ, hz, SCRIPT).invoke_id
    rows = support.wait_finished(ecs, HZ, invoke_id, 2)

    record = admin.get(f"/invocations/{invoke_id}")
    listed = admin.get("/invocations", instance_id=hz[0], page_size=20)["invocations"]
    audit = admin.get("/audit", user=operator.username, page_size=1000)["entries"]
    raw = {
        r.instance_id: admin.call("GET", f"/invocations/{invoke_id}/results/{r.instance_id}/output").content
        for r in rows
    }

    assert record["invoke_id"] == invoke_id
    assert record["creator"] == operator.username
    assert record["invocation_status"] == "Success"
    assert invoke_id in [i["invoke_id"] for i in listed]
    entry = [e for e in audit if e["target"] == invoke_id]
    assert len(entry) == 1, audit
    assert entry[0]["username"] == operator.username
    assert entry[0]["via"] == "ecs"
    for row in rows:
        assert support.unb64(row.output) == raw[row.instance_id]
        assert "第二行".encode() in raw[row.instance_id]
        assert raw[row.instance_id].endswith("ünïcødé without newline".encode())


def test_the_console_s_execution_records_list_a_run_made_through_the_sdk(server, ecs, hz):
    invoke_id = support.run(ecs, HZ, hz[:1], "echo for the console").invoke_id
    support.wait_finished(ecs, HZ, invoke_id, 1)
    console = requests.Session()
    console.trust_env = False

    login = console.post(
        f"{server.url}/login",
        data={"username": "admin", "password": server.admin_password, "next": "/console/invocations"},
        allow_redirects=False,
        timeout=30,
    )
    page = console.get(f"{server.url}/console/invocations", timeout=30)

    assert login.status_code == 303, login.text
    assert page.status_code == 200
    assert re.search(re.escape(invoke_id), page.text), "the run is not on the Execution Records page"
