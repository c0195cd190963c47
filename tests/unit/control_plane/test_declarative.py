"""The declarative document: parsing, validation, resolution against the stored config, diff."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from control_plane.declarative import (
    DocumentParseError,
    diff_configs,
    dump_yaml,
    entities_hash,
    entities_of,
    export_document,
    generated_id,
    parse_document,
    resolve_document,
)
from control_plane.errors import DeclarativeConfigInvalid, lua_table

T0 = 1_700_000_000
T1 = 1_800_000_000


def doc(**sections: Any) -> dict[str, Any]:
    return {"_format_version": "3.0", **sections}


def invalid(document: dict[str, Any]) -> DeclarativeConfigInvalid:
    with pytest.raises(DeclarativeConfigInvalid) as caught:
        resolve_document(document, {}, T0)
    assert caught.value.status == 400
    assert caught.value.body()["code"] == 14
    assert caught.value.body()["name"] == "invalid declarative configuration"
    return caught.value


def shop() -> dict[str, Any]:
    """A small configuration written by hand: nested children, names, shorthands."""
    return doc(
        upstreams=[{
            "name": "shop.internal",
            "algorithm": "least-connections",
            "healthchecks": {"active": {"healthy": {"interval": 5}}},
            "targets": [{"target": "10.0.0.1:8080"}, {"target": "[::1]", "weight": 5}],
        }],
        services=[{
            "name": "shop",
            "url": "http://shop.internal/api",
            "routes": [{"name": "shop", "paths": ["/shop", "~/v[0-9]+/shop$"]}],
        }],
    )


# ---------------------------------------------------------------- resolution


def test_a_hand_written_document_resolves_to_complete_admin_api_entities() -> None:
    config = resolve_document(shop(), {}, T0)
    assert sorted(config) == [
        "ca_certificates", "certificates", "routes", "services", "snis", "targets", "upstreams",
    ]
    (upstream,) = config["upstreams"]
    assert upstream["slots"] == 10000 and upstream["algorithm"] == "least-connections"
    assert upstream["healthchecks"]["active"]["healthy"]["interval"] == 5
    assert upstream["created_at"] == upstream["updated_at"] == T0
    assert sorted(t["target"] for t in config["targets"]) == [
        "10.0.0.1:8080", "[0000:0000:0000:0000:0000:0000:0000:0001]:8000"
    ]
    assert {t["upstream"]["id"] for t in config["targets"]} == {upstream["id"]}
    (service,) = config["services"]
    assert (service["protocol"], service["host"], service["port"], service["path"]) == (
        "http", "shop.internal", 80, "/api"
    )
    (route,) = config["routes"]
    assert route["service"] == {"id": service["id"]}
    assert route["strip_path"] is True


def test_ids_left_out_are_derived_from_names_so_two_clusters_get_the_same_ids() -> None:
    first = resolve_document(shop(), {}, T0)
    second = resolve_document(shop(), {}, T1)
    assert [s["id"] for s in first["services"]] == [generated_id("services", "shop")]
    assert [e["id"] for kind in first for e in first[kind]] == [
        e["id"] for kind in second for e in second[kind]
    ]
    upstream_id = first["upstreams"][0]["id"]
    assert generated_id("targets", f"{upstream_id}|10.0.0.1:8080") in {
        t["id"] for t in first["targets"]
    }


def test_ids_left_out_take_the_stored_entity_with_the_same_name_or_target() -> None:
    stored = resolve_document(
        doc(
            upstreams=[{"id": str(uuid.uuid4()), "name": "shop.internal"}],
            targets=[{"id": str(uuid.uuid4()), "target": "10.0.0.1:8080", "upstream": "shop.internal"}],
            services=[{"id": str(uuid.uuid4()), "name": "shop", "host": "shop.internal"}],
        ),
        {},
        T0,
    )
    config = resolve_document(shop(), stored, T1)
    assert config["upstreams"][0]["id"] == stored["upstreams"][0]["id"]
    assert config["services"][0]["id"] == stored["services"][0]["id"]
    assert stored["targets"][0]["id"] in {t["id"] for t in config["targets"]}
    # created_at comes from the stored entity; a changed entity's updated_at moves to now.
    assert config["services"][0]["created_at"] == T0
    assert config["services"][0]["updated_at"] == T1


def test_reapplying_a_document_changes_nothing() -> None:
    first = resolve_document(shop(), {}, T0)
    again = resolve_document(shop(), first, T1)
    assert again == first
    assert diff_configs(first, again).empty


def test_timestamps_given_are_kept_and_a_dump_resolves_to_itself() -> None:
    config = resolve_document(shop(), {}, T0)
    exported = export_document(7, config)
    assert resolve_document(exported, {}, T1) == config
    assert resolve_document(exported, config, T1) == config


def test_an_edited_dump_moves_updated_at_of_the_changed_entity_only() -> None:
    config = resolve_document(shop(), {}, T0)
    edited = copy.deepcopy(export_document(1, config))
    edited["upstreams"][0]["slots"] = 20
    result = resolve_document(edited, config, T1)
    assert result["upstreams"][0]["slots"] == 20
    assert result["upstreams"][0]["updated_at"] == T1
    assert result["services"] == config["services"]


def test_foreign_keys_may_be_given_by_id_name_or_bare_string() -> None:
    service_id = str(uuid.uuid4())
    config = resolve_document(
        doc(
            services=[{"id": service_id, "name": "s", "host": "h"}],
            routes=[
                {"name": "a", "paths": ["/a"], "service": {"id": service_id}},
                {"name": "b", "paths": ["/b"], "service": {"name": "s"}},
                {"name": "c", "paths": ["/c"], "service": "s"},
                {"name": "d", "paths": ["/d"], "service": service_id},
                {"name": "e", "paths": ["/e"]},
            ],
        ),
        {},
        T0,
    )
    services = {r["name"]: r["service"] for r in config["routes"]}
    assert services == {n: {"id": service_id} for n in "abcd"} | {"e": None}


# ---------------------------------------------------------------- validation


def test_every_problem_is_reported_with_its_place_and_name() -> None:
    error = invalid(doc(
        services=[
            {"name": "ok", "host": "ok"},
            {"name": "bad", "host": "bad host", "retries": "5", "routes": [{"name": "r", "paths": ["x"]}]},
        ],
        upstreams=[{"name": "u", "slots": 5, "targets": [{"target": "a:1", "weight": -1}]}],
    ))
    assert error.problems == [
        "services.2 (service 'bad'): host: invalid value: bad host",
        "services.2 (service 'bad'): retries: expected an integer",
        "services.2.routes.1 (route 'r'): paths.1: should start with: / (fixed path) or ~/ (regex path)",
        "upstreams.1 (upstream 'u'): slots: value should be between 10 and 65536",
        "upstreams.1.targets.1 (target 'a:1'): weight: value should be between 0 and 65535",
    ]
    fields = error.fields or {}
    assert fields["services"][0] is None
    assert fields["services"][1]["routes"] == [
        {"paths": ["should start with: / (fixed path) or ~/ (regex path)"]}
    ]
    assert fields["upstreams"] == [
        {"slots": "value should be between 10 and 65536",
         "targets": [{"weight": "value should be between 0 and 65535"}]}
    ]
    assert error.message.startswith("declarative config is invalid: {services={[2]={")
    flattened = {(e["entity_type"], e["entity_name"]): e for e in error.flattened_errors}
    assert flattened[("service", "bad")]["errors"] == [
        {"type": "field", "field": "host", "message": "invalid value: bad host"},
        {"type": "field", "field": "retries", "message": "expected an integer"},
    ]
    assert flattened[("route", "r")]["location"] == "services.2.routes.1"
    assert flattened[("route", "r")]["errors"][0]["field"] == "paths.1"


def test_a_reference_outside_the_document_is_refused() -> None:
    error = invalid(doc(
        routes=[{"name": "r", "paths": ["/"], "service": {"id": str(uuid.uuid4())}}],
        targets=[{"target": "a:1", "upstream": "nowhere"}, {"target": "b:1"}],
    ))
    assert (error.fields or {})["targets"][0]["upstream"].startswith(
        "the foreign key '{name=\"nowhere\"}' does not reference an existing 'upstreams' entity"
    )
    assert (error.fields or {})["targets"][1] == {"upstream": "required field missing"}
    assert "does not reference an existing 'services' entity" in (error.fields or {})["routes"][0]["service"]


def test_names_ids_and_targets_must_be_unique() -> None:
    upstream_id = str(uuid.uuid4())
    error = invalid(doc(
        services=[{"name": "s", "host": "a"}, {"name": "s", "host": "b"}],
        upstreams=[
            {"id": upstream_id, "name": "u1"},
            {"id": upstream_id, "name": "u2", "targets": [{"target": "h:1"}, {"target": "h:1"}]},
        ],
    ))
    assert error.problems == [
        "services.2 (service 's'): uniqueness violation: 'services' entity with name set to 's' already declared",
        f"upstreams.2 (upstream 'u2'): uniqueness violation: 'upstreams' entity with primary key set to '{upstream_id}' already declared",
        "upstreams.2.targets.2 (target 'h:1'): uniqueness violation: 'targets' entity with target set to 'h:1' in its upstream already declared",
    ]


def test_services_and_routes_need_an_id_or_a_name() -> None:
    error = invalid(doc(services=[{"host": "h", "routes": [{"paths": ["/"]}]}]))
    assert error.problems == [
        "services.1 (service): needs an 'id' or a 'name' (to match it with the stored configuration)",
        "services.1.routes.1 (route): needs an 'id' or a 'name' (to match it with the stored configuration)",
    ]


def test_a_nested_child_cannot_point_at_another_parent() -> None:
    error = invalid(doc(services=[
        {"name": "a", "host": "a", "routes": [{"name": "r", "paths": ["/"], "service": "b"}]},
        {"name": "b", "host": "b"},
    ]))
    assert error.problems == ["services.1.routes.1 (route 'r'): service: must be the enclosing service (or left out)"]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({}, "_format_version: required field missing"),
        ({"_format_version": 3.0}, '_format_version: expected a string (write "3.0", quoted)'),
        ({"_format_version": "2.1"}, "_format_version: expected one of: 3.0"),
        ({**doc(), "plugins": [{"name": "cors"}]}, "plugins: unknown field"),
        ({**doc(), "_mystery": 1}, "_mystery: unknown field"),
        ({**doc(), "services": {"name": "s"}}, "services: expected an array"),
        ({**doc(), "services": ["s"]}, "services.1: expected a record"),
        ({**doc(), "_transform": "no"}, "_transform: expected a boolean"),
    ],
)
def test_document_level_problems(document: dict[str, Any], problem: str) -> None:
    assert invalid(document).problems == [problem]


def test_empty_lists_of_kinds_ferry_lacks_and_metadata_are_accepted() -> None:
    config = resolve_document(
        {**doc(), "_transform": False, "_comment": "x", "_config_version": 3, "_config_hash": "h",
         "plugins": [], "consumers": None},
        {},
        T0,
    )
    assert config == {"certificates": [], "ca_certificates": [], "snis": [], "upstreams": [], "targets": [], "services": [], "routes": []}


def test_the_error_message_prints_the_tree_as_kong_does() -> None:
    assert lua_table({"services": [None, {"@entity": ["x"], "host": "y"}]}) == (
        '{services={[2]={["@entity"]={"x"},host="y"}}}'
    )


# ---------------------------------------------------------------------- diff


def test_diff_lists_creates_updates_with_their_fields_and_deletes_children_first() -> None:
    current = resolve_document(shop(), {}, T0)
    edited = copy.deepcopy(export_document(1, current))
    edited["upstreams"][0]["healthchecks"]["active"]["healthy"]["interval"] = 10
    edited["routes"] = []
    edited["services"] = []
    edited["targets"] = [t for t in edited["targets"] if t["target"] == "10.0.0.1:8080"]
    edited["upstreams"].append({"name": "new.internal"})
    desired = resolve_document(edited, current, T1)
    diff = diff_configs(current, desired)
    assert [(c.op, c.kind) for c in diff.changes] == [
        ("create", "upstreams"), ("update", "upstreams"),
        ("delete", "routes"), ("delete", "services"), ("delete", "targets"),
    ]
    update = diff.changes[1]
    assert [(f.path, f.old, f.new) for f in update.fields] == [
        ("updated_at", T0, T1), ("healthchecks.active.healthy.interval", 5, 10)
    ]
    assert (diff.count("create"), diff.count("update"), diff.count("delete")) == (1, 1, 3)
    assert [kind for kind, _ in diff.deletes] == ["routes", "services", "targets"]
    assert [e["name"] for _, e in diff.upserts] == ["new.internal", "shop.internal"]


# ------------------------------------------------------------- text formats


def test_yaml_dump_reads_back_equal_with_values_yaml_would_mistake() -> None:
    config = resolve_document(
        doc(
            services=[{"name": "s", "host": "h", "tags": ["yes", "null", "123", "1.0", "2024-01-01",
                                                         "~", "é ü", "日本", "a: b", "#x"]}],
            routes=[{"name": "r", "service": "s", "paths": ["~/v[0-9]+/(?<id>\\d+)$", "/a b"],
                     "headers": {"x-mode": ["~*^on$", "off", "true"]}}],
        ),
        {},
        T0,
    )
    document = export_document(1, config)
    text = dump_yaml(document)
    assert parse_document(text) == document
    assert resolve_document(parse_document(text), {}, T1) == config
    assert entities_hash(entities_of(parse_document(text))) == document["_config_hash"]


def test_unquoted_dates_stay_strings() -> None:
    assert parse_document("_format_version: '3.0'\nx: 2024-01-01\n")["x"] == "2024-01-01"


def test_json_is_accepted_and_kongs_config_wrapper_is_unwrapped() -> None:
    assert parse_document('{"_format_version": "3.0", "services": []}', json_only=True) == doc(services=[])
    wrapped = parse_document('{"config": "_format_version: \\"3.0\\"\\nservices: []\\n"}', json_only=True)
    assert wrapped == doc(services=[])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the document is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("a: [1, 2", "while parsing"),
        ("a: .nan\n", "a: nan is not a finite number"),
        ("a: !!binary aGk=\n", "a: unsupported value of type bytes"),
        ("a: &a [*a]\n", "nested too deeply"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_unparsable_documents_say_why(text: str, reason: str) -> None:
    with pytest.raises(DocumentParseError, match=reason.replace("[", r"\[")):
        parse_document(text)


def test_an_alias_bomb_is_refused_before_it_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("control_plane.declarative_parsing.MAX_DOCUMENT_VALUES", 1000)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    with pytest.raises(DocumentParseError, match="more than 1000 values"):
        parse_document("\n".join(lines) + "\n")
    assert parse_document("_format_version: '3.0'\nx: &h {a: 1}\ny: *h\n")["y"] == {"a": 1}


def test_upper_case_ids_are_stored_and_referenced_in_canonical_form() -> None:
    service_id = str(uuid.uuid4())
    config = resolve_document(
        doc(services=[{"id": service_id.upper(), "name": "s", "host": "h"}],
            routes=[{"name": "r", "paths": ["/"], "service": {"id": service_id.upper()}}]),
        {},
        T0,
    )
    assert config["services"][0]["id"] == service_id
    assert config["routes"][0]["service"] == {"id": service_id}
