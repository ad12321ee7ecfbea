"""Activations and managed instances through the official Python SDK, in both signature modes:
CreateActivation, DescribeActivations, DisableActivation, DeleteActivation,
DescribeManagedInstances, DeregisterManagedInstance. Only a throwaway instance registered here
is deregistered, never one of the demo's agents."""

from __future__ import annotations

import requests
from alibabacloud_ecs20140526 import models as m

import support
from support import EU, HZ


def register(server, activation_id: str, code: str, hostname: str) -> requests.Response:
    """Enrols a fake instance as an agent would (`POST /agent/v1/register`)."""
    return requests.post(
        f"{server.url}/agent/v1/register",
        json={
            "activation_id": activation_id,
            "activation_code": code,
            "hostname": hostname,
            "os_type": "linux",
            "os_name": "Throwaway Linux",
            "ip_addresses": [],
            "agent_version": "0.0.0-test",
        },
        timeout=30,
    )


def describe_activation(ecs, activation_id: str):
    body = ecs.describe_activations(m.DescribeActivationsRequest(region_id=EU, activation_id=activation_id)).body
    return body


def test_an_activation_registers_an_instance_that_can_be_deregistered(server, ecs_admin):
    name = support.unique("throwaway")

    created = ecs_admin.create_activation(
        m.CreateActivationRequest(
            region_id=EU, instance_count=2, time_to_live_in_hours=1, description="SDK test"
        )
    ).body
    fresh = describe_activation(ecs_admin, created.activation_id)
    registered = register(server, created.activation_id, created.activation_code, name)
    assert registered.status_code == 201, registered.text
    instance_id = registered.json()["instance_id"]
    used = describe_activation(ecs_admin, created.activation_id).activation_list[0]
    managed = ecs_admin.describe_managed_instances(
        m.DescribeManagedInstancesRequest(region_id=EU, instance_id=[instance_id])
    ).body
    disabled = ecs_admin.disable_activation(
        m.DisableActivationRequest(region_id=EU, activation_id=created.activation_id)
    ).body
    refused = register(server, created.activation_id, created.activation_code, name + "-2")
    deregistered = ecs_admin.deregister_managed_instance(
        m.DeregisterManagedInstanceRequest(region_id=EU, instance_id=instance_id)
    ).body
    after = ecs_admin.describe_managed_instances(
        m.DescribeManagedInstancesRequest(region_id=EU, instance_id=[instance_id])
    ).body

    assert created.activation_id and created.activation_code
    assert fresh.total_count == 1
    activation = fresh.activation_list[0]
    assert activation.activation_id == created.activation_id
    assert activation.instance_count == 2
    assert activation.registered_count == 0
    assert activation.time_to_live_in_hours == 1
    assert activation.description == "SDK test"
    assert activation.disabled is False
    assert activation.creation_time
    assert used.registered_count == 1
    assert managed.total_count == 1
    instance = managed.instances[0]
    assert instance.instance_id == instance_id
    assert instance.activation_id == created.activation_id
    assert instance.hostname == name
    assert instance.os_type.lower() == "linux"
    assert instance.agent_version == "0.0.0-test"
    assert instance.connected is False
    assert instance.registration_time
    assert disabled.activation.activation_id == created.activation_id
    assert disabled.activation.disabled is True
    assert 400 <= refused.status_code < 500, refused.text
    assert deregistered.instance.instance_id == instance_id
    assert after.total_count == 0 and after.instances == []


def test_an_unused_activation_can_be_deleted(ecs_admin):
    created = ecs_admin.create_activation(
        m.CreateActivationRequest(region_id=EU, instance_count=1, time_to_live_in_hours=1)
    ).body

    deleted = ecs_admin.delete_activation(
        m.DeleteActivationRequest(region_id=EU, activation_id=created.activation_id)
    ).body
    after = describe_activation(ecs_admin, created.activation_id)

    assert deleted.activation.activation_id == created.activation_id
    assert after.total_count == 0 and after.activation_list == []


def test_describe_activations_pages_both_ways(ecs_admin):
    made = [
        ecs_admin.create_activation(
            m.CreateActivationRequest(region_id=EU, instance_count=1, time_to_live_in_hours=1)
        ).body.activation_id
        for _ in range(3)
    ]

    def by_number(page):
        body = ecs_admin.describe_activations(
            m.DescribeActivationsRequest(region_id=EU, page_number=page, page_size=2)
        ).body
        return [a.activation_id for a in body.activation_list], body.total_count, body.page_size

    def by_token(token):
        body = ecs_admin.describe_activations(
            m.DescribeActivationsRequest(region_id=EU, max_results=2, next_token=token)
        ).body
        return [a.activation_id for a in body.activation_list], body.next_token

    numbered, _ = support.pages_by_number(by_number)
    tokened, _ = support.pages_by_token(by_token)
    for activation_id in made:
        ecs_admin.delete_activation(m.DeleteActivationRequest(region_id=EU, activation_id=activation_id))

    assert set(made) <= set(numbered)
    assert set(numbered) == set(tokened)


def test_describe_managed_instances_lists_the_demo_s_agents(ecs, hz):
    body = ecs.describe_managed_instances(m.DescribeManagedInstancesRequest(region_id=HZ)).body
    connected = ecs.describe_managed_instances(
        m.DescribeManagedInstancesRequest(region_id=HZ, instance_id=hz, connected="true")
    ).body

    rows = {i.instance_id: i for i in body.instances}
    assert set(hz) <= set(rows)
    for instance_id in hz:
        assert rows[instance_id].connected is True
        assert rows[instance_id].hostname
        assert rows[instance_id].agent_version
    assert sorted(i.instance_id for i in connected.instances) == hz


def test_an_operator_may_not_create_an_activation(ecs):
    refused = support.refusal(
        lambda: ecs.create_activation(m.CreateActivationRequest(region_id=EU, instance_count=1))
    )

    assert (refused.status_code, refused.code) == (403, "Forbidden.RAM"), support.describe(refused)
