"""A pool's desktops get the memory and vCPUs their image asks for unless the admin says otherwise:
an agent desktop squeezed into busybox's 256 MiB cannot start its enforcer or its browser."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.errors import InvalidInput
from controlplane.main import create_app
from controlplane.services import images, pools
from tests.conftest import USERS


def test_a_pool_takes_its_images_memory_and_vcpus_unless_given(ctx, image):
    images.build(ctx, "agent-desktop", actor="t")
    agents = pools.create(ctx, name="agents", image="agent-desktop", size=0, actor="t")
    assert (agents.memory_mib, agents.vcpus) == (1024, 2)
    small = pools.create(ctx, name="small", image="busybox-desktop", size=0, actor="t")
    assert (small.memory_mib, small.vcpus) == (256, 1)
    big = pools.create(ctx, name="big", image="agent-desktop", size=0, memory_mib=2048, vcpus=1, actor="t")
    assert (big.memory_mib, big.vcpus) == (2048, 1)


@pytest.mark.parametrize("kwargs, field", [({"memory_mib": 64}, "memory_mib"), ({"vcpus": 32}, "vcpus")])
def test_a_shape_out_of_range_names_its_field_and_creates_nothing(ctx, image, kwargs, field):
    with pytest.raises(InvalidInput) as err:
        pools.create(ctx, name="agents", image="busybox-desktop", size=0, actor="t", **kwargs)
    assert err.value.field == field
    assert pools.list_all(ctx) == []


def test_the_api_leaves_the_shape_to_the_image_too(ctx, settings, image):
    images.build(ctx, "agent-desktop", actor="t")
    with TestClient(create_app(settings, ctx)) as client:
        r = client.post("/api/v1/auth/login", json={"username": "carol", "password": USERS["carol"][0]})
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        r = client.post("/api/v1/pools", json={"name": "agents", "image": "agent-desktop", "size": 0},
                        headers=headers)
        assert r.status_code == 201, r.text
    (pool,) = pools.list_all(ctx)
    assert (pool.memory_mib, pool.vcpus) == (1024, 2)
