"""Fixtures: the server run.sh started, the users and AccessKeys the tests sign with, the demo's
instances, and a Tea client per signature mode."""

from __future__ import annotations

import pytest

import support
from support import EU, HZ, AccessKey, JsonApi, Server


@pytest.fixture(scope="session")
def server() -> Server:
    return Server.from_env()


@pytest.fixture(scope="session")
def admin(server: Server) -> JsonApi:
    """The JSON API as `admin` (HTTP Basic)."""
    return JsonApi(server, "admin", server.admin_password)


@pytest.fixture(scope="session")
def operator(admin: JsonApi) -> JsonApi:
    """A user with the operator role: the one most SDK calls act as, so that a run's recorded
    user is visibly the key's and not `admin`."""
    return admin.create_user("operator")


@pytest.fixture(scope="session")
def operator_key(operator: JsonApi) -> AccessKey:
    return operator.create_access_key("operator's key for the ECS SDK tests")


@pytest.fixture(scope="session")
def admin_key(admin: JsonApi) -> AccessKey:
    """An admin's key, for the admin-only actions (activations, deregistration)."""
    return admin.create_access_key("admin's key for the ECS SDK tests")


@pytest.fixture(scope="session")
def viewer_key(admin: JsonApi) -> AccessKey:
    return admin.create_user("viewer").create_access_key("viewer's key")


@pytest.fixture(scope="session")
def demo_instances(admin: JsonApi) -> dict[str, list[str]]:
    """The demo's four online instances by region, two each, sorted by id."""
    found: dict[str, list[str]] = {HZ: [], EU: []}
    for instance in admin.instances():
        if instance["region_id"] in found and instance["agent"]["online"]:
            found[instance["region_id"]].append(instance["instance_id"])
    for region, ids in found.items():
        assert len(ids) == 2, f"expected the demo's 2 online instances in {region}, found {ids}"
        ids.sort()
    return found


@pytest.fixture(scope="session")
def hz(demo_instances: dict[str, list[str]]) -> list[str]:
    return demo_instances[HZ]


@pytest.fixture(scope="session")
def eu(demo_instances: dict[str, list[str]]) -> list[str]:
    return demo_instances[EU]


@pytest.fixture(params=support.MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test that uses a Tea client runs once per signature mode."""
    return request.param


@pytest.fixture
def ecs(server: Server, operator_key: AccessKey, mode: str):
    """The Python Tea client as the operator, in this test's signature mode."""
    return support.tea(server, operator_key, mode)


@pytest.fixture
def ecs_admin(server: Server, admin_key: AccessKey, mode: str):
    """The Python Tea client as admin, in this test's signature mode."""
    return support.tea(server, admin_key, mode)
