from __future__ import annotations

from pathlib import Path

import pytest

from cdc.core.dialects import SQLITE
from cdc.core.errors import ConfigError
from cdc.core.settings import load_settings
from cdc.core.tables import TableRef

PG = "postgresql://capture:s3cret-pw@db.internal:5432/shop"


def error_of(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


def test_nothing_configured_is_the_embedded_demo() -> None:
    settings = load_settings({})
    assert settings.embedded and settings.dialect is SQLITE and settings.bus == "file"
    assert settings.table_refs == [TableRef("main", "widgets")]
    assert settings.event_source == "legacy.cdc-demo"


def test_postgres_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "CDC_DATABASE_URL": PG,
            "CDC_TABLES": "orders, sales.items",
            "CDC_BATCH_SIZE": "200",
            "CDC_BUS": "eventbridge",
        }
    )
    assert settings.url.drivername == "postgresql+psycopg"
    assert settings.table_refs == [TableRef("public", "orders"), TableRef("sales", "items")]
    assert settings.event_source == "legacy.shop"
    assert settings.batch_size == 200
    assert "s3cret" not in settings.display_url and "s3cret" not in repr(settings)


def test_tables_are_required_only_where_asked() -> None:
    settings = load_settings({"CDC_DATABASE_URL": PG}, require_tables=False)
    assert settings.table_refs == []
    with pytest.raises(ConfigError, match="CDC_TABLES"):
        load_settings({"CDC_DATABASE_URL": PG})


@pytest.mark.parametrize(
    ("env", "names", "says"),
    [
        ({"CDC_DATABASE_URL": PG}, "CDC_TABLES", "CDC_TABLES=public.orders"),
        ({"CDC_CAPTURE": "wal"}, "CDC_CAPTURE", "'changelog' or 'logical'"),
        ({"CDC_BATCH_SIZE": "0"}, "CDC_BATCH_SIZE", "greater than or equal to 1"),
        ({"CDC_BATCH_SIZE": "many"}, "CDC_BATCH_SIZE", "valid integer"),
        ({"CDC_DATABASE_URL": "mysql://u:s3cret-pw@h/db"}, "CDC_DATABASE_URL", "not supported"),
        ({"CDC_DATABASE_URL": "not a url s3cret-pw"}, "CDC_DATABASE_URL", "postgresql://USER"),
        ({"CDC_DETAIL_TYPE": "{schema}.{tabel}"}, "CDC_DETAIL_TYPE", "unknown placeholder {tabel}"),
        ({"CDC_TABELS": "x"}, "CDC_TABELS", "did you mean CDC_TABLES"),
        ({"CDC_BUS": "kafka"}, "CDC_BUS", "'eventbridge', 'file' or 'null'"),
    ],
)
def test_a_wrong_setting_is_named_with_what_to_write(
    env: dict[str, str], names: str, says: str
) -> None:
    message = error_of(env)
    assert message.startswith(names) and says in message
    assert "s3cret" not in message


def test_toml_file_with_per_table_options_and_environment_winning(tmp_path: Path) -> None:
    config = tmp_path / "cdc.toml"
    config.write_text(
        'database_url = "postgresql://u@h/legacy"\n'
        'tables = ["orders", "customers"]\n'
        "batch_size = 50\n"
        '[table_options."public.orders"]\n'
        'detail_type = "NEW_ORDER_{op}"\n'
    )
    settings = load_settings({"CDC_CONFIG": str(config), "CDC_BATCH_SIZE": "70"})
    assert settings.batch_size == 70
    assert settings.detail_type_for(TableRef("public", "orders")) == "NEW_ORDER_{op}"
    assert settings.detail_type_for(TableRef("public", "customers")) == "{schema}.{table}.{op}"


def test_toml_errors_name_the_file_setting(tmp_path: Path) -> None:
    config = tmp_path / "cdc.toml"
    config.write_text("batch_sise = 5\n")
    assert "unknown setting 'batch_sise'" in error_of({"CDC_CONFIG": str(config)})
    config.write_text('batch_size = "x"\n')
    assert error_of({"CDC_CONFIG": str(config)}).startswith("batch_size in the CDC_CONFIG file")
    config.write_text('[table_options."orders"]\ndetail_type = "{nope}"\n')
    assert "unknown placeholder {nope}" in error_of({"CDC_CONFIG": str(config)})
    config.write_text("not = toml = at all")
    assert "not valid TOML" in error_of({"CDC_CONFIG": str(config)})
    assert "no file at" in error_of({"CDC_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        (
            "tabels = ['orders']\n",
            "unknown setting 'tabels' in the TOML file; did you mean 'tables'?",
        ),
        (
            '[table_options."public.orders"]\ndetail_typ = "x"\n',
            "unknown setting 'table_options.public.orders.detail_typ' in the TOML file; "
            "did you mean 'detail_type'?",
        ),
        ("zzz = 1\n", "unknown setting 'zzz' in the TOML file"),
    ],
)
def test_a_toml_key_typo_gets_a_hint_as_an_environment_typo_does(
    tmp_path: Path, toml: str, says: str
) -> None:
    config = tmp_path / "cdc.toml"
    config.write_text(toml)
    assert error_of({"CDC_CONFIG": str(config)}) == f"CDC_CONFIG: {says}"


def test_a_typo_in_the_topology_table_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cdc.cli import main

    config = tmp_path / "cdc.toml"
    config.write_text('[[topology.producers]]\nname = "shop"\nsource = "legacy.shop"\nbuss = "x"\n')
    monkeypatch.setenv("CDC_CONFIG", str(config))
    assert main(["topology", "render"]) == 2
    assert capsys.readouterr().err == (
        "cdc: configuration error: CDC_CONFIG: unknown setting 'topology.producers[0].buss' in "
        "the TOML file; did you mean 'bus'?\n"
    )
