"""The Terraform module in terraform/ against a live ShiftDesk API (uvicorn over HTTPS on loopback,
the fake hypervisor behind it): its example root is evaluated from the HCL (python-hcl2), and every
resource's create, read, update and delete is replayed as the Mastercard/restapi provider sends it.
A plan after an apply must be empty (every object reads back as written), a change made by other
means must show as drift and be put back, and each change is audited as the admin who signed in."""

from __future__ import annotations

import ssl
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from controlplane.main import create_app, tls_files
from controlplane.services import audit, policies, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import USERS
from tests.e2e.conftest import Server
from tests.unit.terraform.restapi import Planned, Replay, drift, load_root, plan, replaced

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "terraform" / "examples" / "contact-centre"
EXPECTED = {'restapi_object.pool["sales"]', 'restapi_object.pool["support"]', 'restapi_object.roster["sales"]',
            'restapi_object.policy["all-agents"]', 'restapi_object.policy["sales-floor"]',
            'restapi_object.policy["support-desk"]'}


@pytest.fixture
def server(ctx, settings, image):
    cert, key = tls_files(settings)
    with Server(create_app(settings, ctx, Reconciler(ctx)), cert, key) as s:
        s.ca = cert.parent / "ca.pem"
        yield s


@pytest.fixture
def api(root):
    replay = Replay(root.provider)
    yield replay
    replay.http.close()  # the server stops at once instead of waiting out a kept-alive connection


@pytest.fixture
def root(server):
    r = httpx.post(f"{server.url}/api/v1/auth/login", verify=ssl.create_default_context(cafile=server.ca),
                   json={"username": "carol", "password": USERS["carol"][0]})
    assert r.status_code == 200, r.text
    return load_root(EXAMPLE, {"shiftdesk_url": server.url, "shiftdesk_token": r.json()["token"],
                               "shiftdesk_ca_file": str(server.ca)})


def apply(api: Replay, objects: list[Planned]) -> None:
    """`terraform apply` from an empty state: create each object, then refresh it."""
    for obj in objects:
        r = api.create(obj)
        assert r.status_code in (200, 201), f"{obj.address}: {r.status_code} {r.text}"
        actual = api.read(obj)
        assert actual is not None and not drift(obj, actual), f"{obj.address} reads back as {actual}"


def planned_changes(api: Replay, objects: list[Planned]) -> list[str]:
    """What `terraform plan` would change: objects missing or reading back differently."""
    return [o.address for o in objects if (actual := api.read(o)) is None or drift(o, actual)]


def by_address(objects: list[Planned]) -> dict[str, Planned]:
    return {o.address: o for o in objects}


def wait_gone(api: Replay, obj: Planned, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while api.read(obj) is not None:
        assert time.monotonic() < deadline, f"{obj.address} still there after {timeout:.0f} s"
        time.sleep(0.2)


def test_the_example_applies_reads_back_as_written_and_is_audited(root, api, ctx):
    objects = plan(root.module_dir, root.inputs, root.provider)
    assert {o.address for o in objects} == EXPECTED
    assert planned_changes(api, objects) == [o.address for o in objects]  # nothing exists yet

    apply(api, objects)

    assert planned_changes(api, objects) == []  # a second plan is empty
    sales, support = pools.views(ctx, "sales")[0], pools.views(ctx, "support")[0]
    assert sales.groups == ["cn=cc-sales-team,ou=agents,ou=shiftdesk,dc=shiftdesk,dc=test"]
    assert support.size == 1 and sales.size > 1  # the roster sizes sales now, and that is no drift
    _, docs = policies.current_documents(ctx)
    assert set(docs) == {"all-agents", "sales-floor", "support-desk"}
    actions = [(e["actor"], e["action"], e["target"]) for e in audit.recent(ctx, limit=500, actor="carol")]
    assert ("carol", "pool.create", "sales") in actions and ("carol", "roster.apply", "sales") in actions
    assert sum(1 for a in actions if a[:2] == ("carol", "policy.apply")) == 3


def test_changes_update_in_place_drift_is_put_back_and_force_new_replaces(root, api, ctx):
    objects = plan(root.module_dir, root.inputs, root.provider)
    apply(api, objects)

    # the admin edits the configuration: one more team on sales, a bigger support pool, a new domain
    inputs = dict(root.inputs)
    inputs["pools"] = {**inputs["pools"], "sales": {**inputs["pools"]["sales"], "groups": [
        "CN=cc-sales-team,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test",
        "CN=cc-sales-night,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test"]},
        "support": {**inputs["pools"]["support"], "size": 3}}
    inputs["policies"] = {**inputs["policies"], "sales-floor": inputs["policies"]["sales-floor"].replace(
        "    - payments.psp.example", "    - payments.psp.example\n    - dialer.brand-partner.example")}
    inputs["rosters"] = {"sales": inputs["rosters"]["sales"].replace("min: 2", "min: 3")}
    old, new = by_address(objects), by_address(plan(root.module_dir, inputs, root.provider))
    changed = [a for a, o in new.items() if o.data != old[a].data]  # the configuration changed
    assert sorted(changed) == ['restapi_object.policy["sales-floor"]', 'restapi_object.pool["sales"]',
                               'restapi_object.pool["support"]', 'restapi_object.roster["sales"]']
    for address in changed:
        assert not replaced(old[address], new[address])
        r = api.update(new[address])
        assert r.status_code == 200, f"{address}: {r.text}"
    assert planned_changes(api, list(new.values())) == []
    assert pools.views(ctx, "support")[0].size == 3
    assert len(pools.views(ctx, "sales")[0].groups) == 2
    _, docs = policies.current_documents(ctx)
    assert "dialer.brand-partner.example" in docs["sales-floor"]["domains"]["allow"]

    # someone changes a policy by other means: the next plan shows it and the apply puts it back
    policies.put(ctx, "support-desk", "name: support-desk\nbind: {groups: ['CN=x,DC=shiftdesk,DC=test']}\n",
                 actor="mallory")
    support = new['restapi_object.policy["support-desk"]']
    assert planned_changes(api, list(new.values())) == [support.address]
    assert api.update(support).status_code == 200
    assert planned_changes(api, list(new.values())) == []

    # a desktop's memory cannot change in place: the plan replaces the pool
    inputs["pools"] = {**inputs["pools"], "support": {**inputs["pools"]["support"], "memory_mib": 512}}
    bigger = by_address(plan(root.module_dir, inputs, root.provider))['restapi_object.pool["support"]']
    before = new['restapi_object.pool["support"]']
    assert replaced(before, bigger)
    refused = api.update(bigger)  # what an in-place update would get
    assert refused.status_code == 409 and refused.json()["field"] == "memory_mib", refused.text
    assert api.destroy(before).status_code == 202
    wait_gone(api, before)
    assert api.create(bigger).status_code == 201
    assert not drift(bigger, api.read(bigger) or {})
    assert pools.views(ctx, "support")[0].memory_mib == 512


def test_destroy_removes_everything_and_leaves_nothing_behind(root, api, ctx):
    objects = plan(root.module_dir, root.inputs, root.provider)
    apply(api, objects)
    for obj in reversed(objects):  # dependents first, as terraform destroy does
        r = api.destroy(obj)
        assert r.status_code in (202, 204), f"{obj.address}: {r.status_code} {r.text}"
    for obj in objects:
        wait_gone(api, obj)
    assert pools.views(ctx) == []
    assert policies.current_documents(ctx)[1] == {}
    actions = {(e["actor"], e["action"]) for e in audit.recent(ctx, limit=500, actor="carol")}
    assert {("carol", "pool.delete"), ("carol", "policy.remove"), ("carol", "roster.remove")} <= actions


def test_bad_objects_are_refused_naming_the_field_and_change_nothing(root, api, ctx):
    objects = by_address(plan(root.module_dir, root.inputs, root.provider))
    apply(api, list(objects.values()))
    revision, before = policies.current_documents(ctx)

    policy = objects['restapi_object.policy["sales-floor"]']
    cases = [
        (replace(policy, data={"name": "sales-floor", "yaml": "name: other\nbind: {groups: ['CN=x,DC=t,DC=test']}\n"}),
         "name"),
        (replace(policy, data={"name": "sales-floor", "yaml": "name: sales-floor\nbind: {groups: [sales]}\n"}),
         "sales-floor.yaml:2:bind.groups.0"),
        (replace(policy, data={**policy.data, "comment": "x"}), "comment"),
    ]
    for obj, field in cases:
        r = api.update(obj)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.create(policy).status_code == 409  # it exists: create never overwrites
    roster = objects['restapi_object.roster["sales"]']
    r = api.update(replace(roster, data={"pool": "sales", "yaml": roster.data["yaml"].replace("pool: sales",
                                                                                             "pool: support")}))
    assert r.status_code == 422 and r.json()["field"] == "pool", r.text
    pool = objects['restapi_object.pool["support"]']
    r = api.update(replace(pool, data={**pool.data, "image": "no-such-image", "size": 5}))
    assert r.status_code == 404 and pools.views(ctx, "support")[0].size == 1, r.text
    assert policies.current_documents(ctx) == (revision, before)
