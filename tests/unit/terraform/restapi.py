"""What `terraform apply` does with the Mastercard/restapi provider (3.0.0), replayed in Python:
the root module's provider block and module call are evaluated (hcl.py), each restapi_object
instance becomes a Planned object, and its create, read, update and delete are the HTTP requests
the provider sends (create_method to create_path or path, read/update/destroy on path/{id},
drift by its getDelta rules: internal/provider/delta_checker.go). No Terraform binary can be
installed here; this is what keeps the module and the API from drifting apart."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.unit.terraform.hcl import Block, Evaluator, blocks_of, typed


@dataclass
class Provider:
    uri: str
    bearer_token: str
    root_ca_file: str
    create_method: str = "POST"
    read_method: str = "GET"
    update_method: str = "PUT"
    destroy_method: str = "DELETE"
    id_attribute: str | None = None
    write_returns_object: bool = False
    timeout: int = 30

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.uri, verify=ssl.create_default_context(cafile=self.root_ca_file),
                            timeout=self.timeout,
                            headers={"Authorization": f"Bearer {self.bearer_token}"})


@dataclass
class Planned:
    """One restapi_object instance as the plan has it: the JSON it manages and where it lives."""

    address: str
    path: str
    data: dict[str, Any]
    id_attribute: str
    force_new: list[str] = field(default_factory=list)
    ignore_changes_to: list[str] = field(default_factory=list)
    ignore_server_additions: bool = False
    depends_on: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.data[self.id_attribute])


@dataclass
class Root:
    provider: Provider
    module_dir: Path
    inputs: dict[str, Any]


def load_root(root: Path, variables: dict[str, Any]) -> Root:
    """The example root module: its variables, locals, provider block and the module call."""
    blocks = blocks_of(root)
    scope: dict[str, Any] = {"path": {"module": str(root)}, "var": _variables(blocks, variables), "local": {}}
    for block in _kind(blocks, "locals"):
        for name, tree in block.attrs.items():
            scope["local"][name] = Evaluator(scope).eval(tree)
    (provider,) = [b for b in _kind(blocks, "provider") if b.labels == ["restapi"]]
    (module,) = _kind(blocks, "module")
    settings = {k: Evaluator(scope).eval(v) for k, v in provider.attrs.items()}
    inputs = {k: Evaluator(scope).eval(v) for k, v in module.attrs.items() if k != "source"}
    source = Evaluator(scope).eval(module.attrs["source"])
    return Root(Provider(**settings), (root / source).resolve(), inputs)


def plan(module_dir: Path, inputs: dict[str, Any], provider: Provider) -> list[Planned]:
    """Every restapi_object instance of the module, dependencies first."""
    blocks = blocks_of(module_dir)
    var = _variables(blocks, inputs)
    resources = [b for b in _kind(blocks, "resource") if b.labels[0] == "restapi_object"]
    refs = {"restapi_object": {b.labels[1]: f"restapi_object.{b.labels[1]}" for b in resources}}
    out: list[Planned] = []
    for block in sorted(resources, key=lambda b: "depends_on" in b.attrs):
        each_of = Evaluator({"var": var}).eval(block.attrs["for_each"])
        for key, value in each_of.items():
            ev = Evaluator({"var": var, "each": {"key": key, "value": value}, **refs})
            attrs = {k: ev.eval(v) for k, v in block.attrs.items() if k != "for_each"}
            out.append(Planned(address=f'restapi_object.{block.labels[1]}["{key}"]', path=attrs.pop("path"),
                               data=json.loads(attrs.pop("data")),
                               id_attribute=attrs.pop("id_attribute", provider.id_attribute or "id"), **attrs))
    return out


def _kind(blocks: list[Block], kind: str) -> list[Block]:
    return [b for b in blocks if b.kind == kind]


def _variables(blocks: list[Block], given: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for block in _kind(blocks, "variable"):
        name = block.labels[0]
        if name in given:
            value = given[name]
        elif "default" in block.attrs:
            value = Evaluator({}).eval(block.attrs["default"])
        else:
            raise ValueError(f"variable {name!r} is required")
        out[name] = typed(block.attrs["type"], value, f"var.{name}") if "type" in block.attrs else value
    unknown = set(given) - set(out)
    if unknown:
        raise ValueError(f"no variable {sorted(unknown)[0]!r} is declared")
    return out


class Replay:
    """The provider's requests for Planned objects, against a live API."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.http = provider.client()

    def create(self, obj: Planned) -> httpx.Response:
        return self.http.request(self.provider.create_method, obj.path, json=obj.data)

    def read(self, obj: Planned) -> dict[str, Any] | None:
        r = self.http.request(self.provider.read_method, f"{obj.path}/{obj.id}")
        if r.status_code == 404:
            return None  # the provider drops it from state: the next plan creates it again
        r.raise_for_status()
        return r.json()

    def update(self, obj: Planned) -> httpx.Response:
        return self.http.request(self.provider.update_method, f"{obj.path}/{obj.id}", json=obj.data)

    def destroy(self, obj: Planned) -> httpx.Response:
        return self.http.request(self.provider.destroy_method, f"{obj.path}/{obj.id}")


def drift(obj: Planned, actual: dict[str, Any]) -> bool:
    """True when the provider would see a difference between its data and what the API returns."""
    return _delta(obj.data, actual, obj.ignore_changes_to, obj.ignore_server_additions)


def _delta(recorded: dict[str, Any], actual: dict[str, Any], ignore: list[str], ignore_additions: bool) -> bool:
    for key, want in recorded.items():
        if key in ignore:
            continue
        got = actual.get(key)
        if isinstance(want, dict):
            deeper = [i.split(".", 1)[1] for i in ignore if i.startswith(f"{key}.")]
            if not isinstance(got, dict) or _delta(want, got, deeper, ignore_additions):
                return True
        elif (want is None and got is not None) or (want is not None and want != got):
            return True
    return not ignore_additions and bool(set(actual) - set(recorded) - set(ignore))


def replaced(old: Planned, new: Planned) -> bool:
    """Whether the plan replaces OLD by NEW (a force_new key changed) rather than updating it."""
    return any(old.data.get(k) != new.data.get(k) for k in new.force_new)
