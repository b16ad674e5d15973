from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from typing import Any

import pytest

from cdc.core.errors import ConfigError
from cdc.core.tables import TableRef
from sync_back.mapping import Mapping, Mappings, load_mappings

EXAMPLE = tomllib.loads("""
[[sync_back.mappings]]
detail_type = "OrderPlaced"
source = "shop.orders"
table = "public.orders"
op = "upsert"
key = ["id"]
id_path = "id"
version_column = "updated_at"
conflict = "newer_wins"
strict = false
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
customer = { path = "customer.name", type = "text", max_length = 200 }
updated_at = { path = "updated_at", type = "timestamptz" }
note = { path = "note", type = "text", required = false }
""")["sync_back"]


def base() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE["mappings"][0])  # type: ignore[no-any-return]


def one(**changes: Any) -> dict[str, Any]:
    mapping = base()
    mapping.update(changes)
    return {"mappings": [mapping]}


def error_of(section: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_mappings(section)
    return str(caught.value)


def test_the_documented_example_loads_with_its_defaults() -> None:
    mappings = load_mappings(EXAMPLE)
    [mapping] = list(mappings)
    assert mapping.table == TableRef("public", "orders")
    assert mapping.op == "upsert" and mapping.key == ("id",) and mapping.conflict == "newer_wins"
    assert mapping.root_parts == ("order",) and mapping.id_parts == ("id",)
    assert mapping.columns["customer"].parts == ("customer", "name")
    assert mapping.columns["customer"].max_length == 200
    assert mapping.columns["note"].required is False and mapping.columns["id"].required is True
    assert mapping.full_path(mapping.columns["customer"]) == "order.customer.name"


def test_defaults_of_a_minimal_mapping() -> None:
    mapping = Mapping.model_validate(
        {
            "detail_type": "CustomerCreated",
            "table": "customers",
            "op": "upsert",
            "key": ["id"],
            "columns": {"id": {"path": "customer_id", "type": "uuid"}},
        }
    )
    assert mapping.table == TableRef("public", "customers")
    assert mapping.source is None and mapping.id_path == "id" and mapping.version_column is None
    assert mapping.conflict == "newer_wins" and mapping.strict is False and mapping.root is None


def test_an_unqualified_table_takes_the_default_schema_given() -> None:
    mappings = load_mappings(one(table="orders"), default_schema="main")
    assert next(iter(mappings)).table == TableRef("main", "orders")


def test_no_section_or_no_mappings_is_an_empty_set() -> None:
    assert len(load_mappings(None)) == 0
    assert len(load_mappings({})) == 0
    assert load_mappings({"queue_url": "elsewhere"}).find("OrderPlaced", "shop.orders") is None


def mapping_for(detail_type: str, source: str | None, table: str) -> dict[str, Any]:
    entry = {
        "detail_type": detail_type,
        "table": table,
        "op": "upsert",
        "key": ["id"],
        "columns": {"id": {"path": "entity_id", "type": "int"}},
    }
    if source is not None:
        entry["source"] = source
    return entry


def test_find_prefers_a_mapping_naming_the_source() -> None:
    # Given a generic mapping and one for a particular source, in either order
    generic = mapping_for("OrderPlaced", None, "orders_generic")
    shop = mapping_for("OrderPlaced", "shop", "orders_shop")
    for entries in ([generic, shop], [shop, generic]):
        mappings = load_mappings({"mappings": entries})
        # Then the source-specific one wins for its source, the generic one for the rest
        found = mappings.find("OrderPlaced", "shop")
        assert found is not None and found.table.name == "orders_shop"
        found = mappings.find("OrderPlaced", "billing")
        assert found is not None and found.table.name == "orders_generic"
        found = mappings.find("OrderPlaced", None)
        assert found is not None and found.table.name == "orders_generic"
        assert mappings.find("OrderCancelled", "shop") is None


def test_find_with_only_a_source_specific_mapping_does_not_match_other_sources() -> None:
    mappings = load_mappings({"mappings": [mapping_for("OrderPlaced", "shop", "orders")]})
    assert mappings.find("OrderPlaced", "shop") is not None
    assert mappings.find("OrderPlaced", "billing") is None
    assert mappings.find("OrderPlaced", None) is None
    assert Mappings().find("OrderPlaced", "shop") is None


def change(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(mapping: dict[str, Any]) -> None:
        mapping.update(changes)

    return apply


def drop(name: str) -> Callable[[dict[str, Any]], None]:
    def apply(mapping: dict[str, Any]) -> None:
        del mapping[name]

    return apply


def column(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(mapping: dict[str, Any]) -> None:
        mapping["columns"].setdefault(name, {}).update(changes)

    return apply


NAME = "sync_back.mappings[0] (OrderPlaced)"


@pytest.mark.parametrize(
    ("edit", "setting", "says"),
    [
        (change(colums={}), NAME, "colums: unknown key; did you mean 'columns'?"),
        (
            column("customer", max_len=10),
            NAME,
            "columns.customer.max_len: unknown key; did you mean 'max_length'?",
        ),
        (drop("detail_type"), "sync_back.mappings[0]", "detail_type: required, but missing"),
        (
            change(detail_type=""),
            "sync_back.mappings[0]",
            "detail_type: String should have at least 1",
        ),
        (drop("op"), NAME, "op: required, but missing"),
        (change(op="insert"), NAME, "op: Input should be 'upsert' or 'delete' (got 'insert')"),
        (change(conflict="oldest_wins"), NAME, "conflict: Input should be 'newer_wins'"),
        (column("total", type="decimal"), NAME, "columns.total.type: Input should be 'text'"),
        (column("total", path=""), NAME, "columns.total.path: String should have at least 1"),
        (column("total", path="a..b"), NAME, "columns.total.path: 'a..b' is not a path"),
        (change(root="order."), NAME, "root: 'order.' is not a path"),
        (change(id_path=".id"), NAME, "id_path: '.id' is not a path"),
        (column("id", max_length=5), NAME, "columns.id: max_length applies to text columns only"),
        (
            column("customer", max_length=0),
            NAME,
            "columns.customer.max_length: Input should be greater",
        ),
        (change(key=["order_id"]), NAME, "key: column 'order_id' is not mapped"),
        (change(key=[]), NAME, "key: "),
        (change(key=["id", "id"]), NAME, "key: a column is named twice"),
        (change(key=[""]), NAME, "key.0: String should have at least 1"),
        (column("id", required=False), NAME, "key: column 'id' must be required"),
        (column("id", type="json"), NAME, "key: column 'id' is json"),
        (
            change(version_column="changed_at"),
            NAME,
            "version_column: column 'changed_at' is not mapped",
        ),
        (change(version_column="customer"), NAME, "version_column: column 'customer' is text"),
        (
            column("updated_at", required=False),
            NAME,
            "version_column: column 'updated_at' must be required",
        ),
        (change(table=""), NAME, "table: empty table name"),
        (change(table=".orders"), NAME, "table: empty schema name"),
        (change(table="public."), NAME, "table: empty table name"),
        (change(table=5), NAME, "table: expected a table name"),
        (change(columns={}), NAME, "columns: Dictionary should have at least 1"),
        (column("", path="x", type="text"), NAME, "columns: a column name is empty"),
        (
            change(op="delete"),
            NAME,
            "a delete writes no values; map only the key and version columns (remove customer, note, total)",
        ),
        (change(root=None, id_path="id"), "", "id_path: 'id' is also where column 'id' is read"),
        (change(strict="yes"), NAME, "strict: Input should be a valid boolean"),
        (
            column("note", required="false"),
            NAME,
            "columns.note.required: Input should be a valid boolean",
        ),
        (
            column("customer", max_length="200"),
            NAME,
            "columns.customer.max_length: Input should be a valid integer",
        ),
    ],
)
def test_a_wrong_mapping_is_named_by_index_and_detail_type_with_the_field(
    edit: Callable[[dict[str, Any]], None], setting: str, says: str
) -> None:
    mapping = base()
    edit(mapping)
    mapping = {k: v for k, v in mapping.items() if v is not None}
    message = error_of({"mappings": [mapping]})
    assert message.startswith(setting or NAME)
    assert says in message


def test_the_id_path_may_not_be_a_column_path_but_may_be_the_envelope() -> None:
    # The row's own id as event id would make every later event about the row a duplicate.
    mapping = base()
    mapping.update(root="order", id_path="order.id")
    assert "is also where column 'id' is read" in error_of({"mappings": [mapping]})
    mapping["id_path"] = ""
    assert next(iter(load_mappings({"mappings": [mapping]}))).id_parts == ()


def test_a_delete_mapping_maps_its_key_and_version() -> None:
    mapping = base()
    mapping.update(op="delete", conflict="legacy_wins")
    mapping["columns"] = {k: mapping["columns"][k] for k in ("id", "updated_at")}
    loaded = next(iter(load_mappings({"mappings": [mapping]})))
    assert loaded.op == "delete" and loaded.version_column == "updated_at"


def test_several_errors_in_one_mapping_are_all_reported() -> None:
    message = error_of(one(op="merge", conflict="maybe", extra=1))
    assert "op:" in message and "conflict:" in message and "extra: unknown key" in message


def test_a_duplicate_detail_type_and_source_names_both_mappings() -> None:
    first, second = base(), base()
    second["table"] = "public.orders_copy"
    message = error_of({"mappings": [first, second]})
    assert message.startswith("sync_back.mappings[1] (OrderPlaced)")
    assert "same detail_type and source as sync_back.mappings[0] (OrderPlaced)" in message
    # The same DetailType from two sources, or with and without a source, is fine
    second["source"] = "billing"
    assert len(load_mappings({"mappings": [first, second]})) == 2
    del second["source"]
    assert len(load_mappings({"mappings": [first, second]})) == 2


def test_the_section_and_its_mappings_must_be_tables() -> None:
    assert error_of(["x"]).startswith("sync_back: expected a table")
    assert error_of({"mappings": {"detail_type": "x"}}).startswith("sync_back.mappings: ")
    assert "[[sync_back.mappings]]" in error_of({"mappings": ["OrderPlaced"]})


def test_the_second_mapping_is_named_by_its_index() -> None:
    broken = base()
    broken.update(detail_type="OrderShipped", key=["nope"])
    message = error_of({"mappings": [base(), broken]})
    assert message.startswith("sync_back.mappings[1] (OrderShipped): key: column 'nope'")


def test_any_non_empty_identifier_is_accepted_as_it_is_quoted_later() -> None:
    mapping = base()
    mapping["table"] = 'weird schema."Orders; DROP TABLE x"'
    mapping["columns"]['select "name"'] = {"path": "x", "type": "text", "required": False}
    loaded = next(iter(load_mappings({"mappings": [mapping]})))
    assert loaded.table == TableRef("weird schema", '"Orders; DROP TABLE x"')
    assert 'select "name"' in loaded.columns
