"""AccessKeys through the JSON API (`/api/v1/access-keys`): create, list, disable, delete, the
per-user limit, the audit trail, and the secret never kept or logged in plain text."""

from __future__ import annotations

from pathlib import Path

from alibabacloud_ecs20140526 import models as m

import support


def keys_of(listing) -> list[dict]:
    """The rows of a `GET /access-keys` answer."""
    return listing["access_keys"] if isinstance(listing, dict) else listing


def test_a_key_is_created_listed_disabled_and_deleted(admin):
    user = admin.create_user("operator")

    created = user.call("POST", "/access-keys", json={"description": "laptop"})
    listed = user.get("/access-keys")
    disabled = user.call("PATCH", f"/access-keys/{created.json()['access_key_id']}", json={"enabled": False})
    after_disable = user.get("/access-keys")
    deleted = user.call("DELETE", f"/access-keys/{created.json()['access_key_id']}")
    after_delete = user.get("/access-keys")

    assert created.status_code == 201, created.text
    key = created.json()
    assert key["access_key_id"] and key["access_key_secret"]
    assert key["description"] == "laptop"
    assert key["enabled"] is True
    assert key["created_time"]
    rows = keys_of(listed)
    assert [r["access_key_id"] for r in rows] == [key["access_key_id"]]
    assert key["access_key_secret"] not in str(listed)
    assert disabled.status_code in (200, 204), disabled.text
    assert keys_of(after_disable)[0]["enabled"] is False
    assert deleted.status_code in (200, 204), deleted.text
    assert keys_of(after_delete) == []


def test_a_user_may_hold_at_most_two_keys(admin):
    user = admin.create_user("operator")
    first = user.create_access_key("one")
    user.create_access_key("two")

    third = user.call("POST", "/access-keys", json={"description": "three"})
    user.call("DELETE", f"/access-keys/{first.id}")
    after_delete = user.call("POST", "/access-keys", json={"description": "three again"})

    assert 400 <= third.status_code < 500, third.text
    assert third.json()["code"], third.text
    assert after_delete.status_code == 201, after_delete.text
    assert len(keys_of(user.get("/access-keys"))) == 2


def test_a_user_sees_only_their_own_keys(admin, operator_key):
    other = admin.create_user("operator")

    listed = keys_of(other.get("/access-keys"))
    patch = other.call("PATCH", f"/access-keys/{operator_key.id}", json={"enabled": False})

    assert operator_key.id not in [k["access_key_id"] for k in listed]
    assert patch.status_code in (403, 404), patch.text


def test_creating_disabling_and_deleting_a_key_is_audited(admin):
    user = admin.create_user("operator")
    key = user.create_access_key("audited")
    user.call("PATCH", f"/access-keys/{key.id}", json={"enabled": False})
    user.call("DELETE", f"/access-keys/{key.id}")

    entries = admin.get("/audit", user=user.username, page_size=1000)["entries"]

    about_key = [e for e in entries if key.id in e["target"] or key.id in e["detail"]]
    assert len(about_key) >= 3, entries
    assert all(key.secret not in str(e) for e in entries)


def test_the_secret_is_never_stored_or_logged_in_plain_text(server, admin, operator_key, hz):
    ecs = support.tea(server, operator_key)
    ecs.describe_instances(m.DescribeInstancesRequest(region_id=support.HZ, instance_ids=support.dumps(hz)))
    secret = operator_key.secret.encode()

    files = [p for p in Path(server.data_dir).rglob("*") if p.is_file()]
    if server.log:
        files.append(Path(server.log))
    holding = [str(p) for p in files if secret in p.read_bytes()]

    assert any(p.name.startswith("fleetrun.db") for p in files), f"no database in {server.data_dir}"
    assert holding == [], f"the AccessKey secret is in plain text in {holding}"
