"""The one settings object of a process: ``CDC_*`` environment variables over a TOML file.

Built once by the CLI (``load_settings``) and passed down; nothing reads the environment at
import. A wrong setting stops start-up with a ``ConfigError`` naming the variable and what to
write. The database password never appears in a message: the URL is a ``SecretStr`` and is
shown only through ``display_url``.
"""

from __future__ import annotations

import difflib
import os
import string
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cdc.core import limits
from cdc.core.dialects import DIALECTS, Dialect, dialect_of
from cdc.core.errors import ConfigError
from cdc.core.tables import TableRef

ENV_PREFIX = "CDC_"
EMBEDDED_DATABASE = "cdc-demo.sqlite3"
EMBEDDED_TABLE = "widgets"
# Environment names with our prefix that are not settings of the service itself.
_NOT_SETTINGS = {"CDC_CONFIG"}
_NOT_SETTINGS_PREFIXES = ("CDC_TEST_", "CDC_BENCH_")
_TEMPLATE_FIELDS = {"schema", "table", "op"}


class TableOptions(BaseModel):
    """Per-table options, from ``[table_options."schema.name"]`` in the TOML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    detail_type: str | None = None

    @field_validator("detail_type")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: SecretStr | None = None
    capture: Literal["changelog", "logical"] = "changelog"
    tables: Annotated[list[str], NoDecode] = Field(default_factory=list)
    bus: Literal["eventbridge", "file", "null"] = "file"
    bus_file: Path = Path("cdc-events.jsonl")
    event_bus_name: str = "default"
    source: str | None = None
    detail_type: str = "{schema}.{table}.{op}"
    batch_size: int = Field(500, ge=1, le=100_000)
    poll_interval: float = Field(0.2, gt=0, le=60)
    max_entry_bytes: int = Field(
        limits.DEFAULT_ENTRY_BYTES, ge=1024, le=limits.PUT_EVENTS_MAX_BYTES
    )
    publish_concurrency: int = Field(4, ge=1, le=32)
    skip_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["sync_back"])
    state_schema: str = Field("cdc", pattern=r"^[a-z_][a-z0-9_]*$")
    # logical mode: the slot and publication (created by `cdc setup`, or a DBA's existing ones).
    # No slot name: one derived from the database's (slots are server-wide, so two databases
    # must not share the default), or an existing `cdc_slot` of this database (the old default).
    slot_name: str | None = Field(None, pattern=r"^[a-z0-9_]{1,63}$")
    publication_name: str = Field("cdc_pub", min_length=1, max_length=63)
    heartbeat_interval: float = Field(10.0, gt=0, le=3600)
    # A table of CDC_TABLES that does not exist or is not captured (no capture triggers, not in
    # the publication): "error" stops the worker, "warn" logs it and turns /readyz not ready.
    missing_tables: Literal["error", "warn"] = "error"
    health_port: int | None = Field(None, ge=0, le=65535)  # /healthz, /readyz, /metrics
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    table_options: dict[str, TableOptions] = Field(default_factory=dict)
    # sync back: the SQS queue an EventBridge rule feeds with the new system's events, and the
    # mappings (TOML only: [[sync_back.mappings]], see sync_back/mapping.py)
    sync_queue_url: str | None = None
    sync_wait_seconds: int = Field(5, ge=0, le=limits.SQS_MAX_WAIT_SECONDS)
    sync_visibility_timeout: int = Field(60, ge=5, le=limits.SQS_MAX_VISIBILITY_SECONDS)
    sync_max_body_bytes: int = Field(
        limits.DEFAULT_BODY_BYTES, ge=1024, le=limits.SQS_MAX_MESSAGE_BYTES
    )
    sync_back: dict[str, Any] = Field(default_factory=dict)
    # validation (cdc/validate): the queue a central-bus rule feeds, the JSON Schemas by
    # DetailType, the central bus valid events are republished to; the topology of accounts
    # (TOML only: [topology], see cdc/topology/model.py)
    validate_queue_url: str | None = None
    validate_wait_seconds: int = Field(5, ge=0, le=limits.SQS_MAX_WAIT_SECONDS)
    validate_visibility_timeout: int = Field(60, ge=1, le=limits.SQS_MAX_VISIBILITY_SECONDS)
    schemas_dir: Path = Path("schemas")
    central_bus_name: str = Field(
        "central", min_length=1, max_length=limits.EVENT_BUS_NAME_MAX_LENGTH
    )
    topology: dict[str, Any] = Field(default_factory=dict)
    # Test hook: "kill_after_publish:N" sends SIGKILL to the worker itself after the N-th
    # published batch, before it is acknowledged (the crash tests use it).
    failpoint: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``load_settings`` merges the environment over the TOML file itself and passes the
        # result in, so a test can hand over its own environment mapping.
        return (init_settings,)

    @field_validator("tables", "skip_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        url = _parse_url(str(value))
        return SecretStr(url.render_as_string(hide_password=False))

    @field_validator("detail_type")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    # -- derived values ---------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """No database configured: the SQLite demo database with its demo table."""
        return self.database_url is None

    @property
    def url(self) -> URL:
        if self.database_url is None:
            return make_url(f"sqlite:///{EMBEDDED_DATABASE}")
        return make_url(self.database_url.get_secret_value())

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> Dialect:
        return dialect_of(self.url)

    @property
    def default_schema(self) -> str:
        return self.dialect.default_schema

    @property
    def table_refs(self) -> list[TableRef]:
        names = self.tables or ([EMBEDDED_TABLE] if self.embedded else [])
        return [TableRef.parse(name, self.default_schema) for name in names]

    @property
    def event_source(self) -> str:
        if self.source:
            return self.source
        return f"legacy.{self.dialect.database_name(self.url)}"

    def detail_type_for(self, table: TableRef) -> str:
        options = self.table_options.get(table.qualified) or self.table_options.get(table.name)
        return options.detail_type if options and options.detail_type else self.detail_type


def check_template(value: str) -> str:
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc})") from None
    unknown = names - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{schema}}, {{table}} and {{op}}"
        )
    return value


def _parse_url(text: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError:
        examples = " or ".join(dialect.url_example for dialect in DIALECTS)
        raise ValueError(f"not a database URL; write {examples}") from None
    return dialect_of(url).normalized_url(url)  # a ValueError for a database not supported


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    require_tables: bool = True,
) -> Settings:
    """Settings from the environment and the TOML file that ``CDC_CONFIG`` names."""
    env = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_path = env.get("CDC_CONFIG")
    if config_path:
        file_values = _read_toml(Path(config_path))
        check_toml_keys(file_values, Settings)
    _check_unknown_environment(env)
    env_values = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX)
        and name not in _NOT_SETTINGS
        and not name.startswith(_NOT_SETTINGS_PREFIXES)
    }
    try:
        settings = Settings(**{**file_values, **env_values})
    except ValidationError as exc:
        raise _config_error(exc, env_values) from None
    # Capture needs its tables; sync back, the validator, migrations and the like do not.
    if require_tables and not settings.embedded and not settings.tables:
        raise ConfigError(
            "CDC_TABLES",
            "name the tables to capture, comma-separated, "
            "e.g. CDC_TABLES=public.orders,public.customers",
        )
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            "CDC_CONFIG", f"no file at {path}; point it at a TOML file or unset it"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("CDC_CONFIG", f"{path} is not valid TOML: {exc}") from None


def check_toml_keys(table: Mapping[str, Any], model: type[BaseModel], where: str = "") -> None:
    """Stop at the first key of a TOML table that ``model`` does not know (nested tables
    included), naming the known key it is closest to, as the environment's typos are named.
    Pydantic's own message, "Extra inputs are not permitted", names neither."""
    if model.model_config.get("extra") != "forbid":
        return
    fields = model.model_fields
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError("CDC_CONFIG", f"unknown setting {path!r} in the TOML file{hint}")
        for inner, inner_table, inner_path in _nested_tables(fields[key].annotation, value, path):
            check_toml_keys(inner_table, inner, inner_path)


def _nested_tables(
    annotation: Any, value: Any, path: str
) -> Iterator[tuple[type[BaseModel], Mapping[str, Any], str]]:
    """The tables inside ``value`` that a model describes, by the field's annotation:
    ``Model``, ``dict[str, Model]``, ``list[Model]``, ``tuple[Model, ...]``, ``Model | None``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(value, dict):
            yield annotation, value, path
    elif origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            yield from _nested_tables(args[1], item, f"{path}.{key}")
    elif origin in (list, tuple) and args and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nested_tables(args[0], item, f"{path}[{index}]")
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _nested_tables(arg, value, path)


def _check_unknown_environment(env: Mapping[str, str]) -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for name in env:
        if (
            name.startswith(ENV_PREFIX)
            and name not in known
            and name not in _NOT_SETTINGS
            and not name.startswith(_NOT_SETTINGS_PREFIXES)
        ):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(name, f"is not a setting of this service{hint}")


def _config_error(exc: ValidationError, env_values: Mapping[str, Any]) -> ConfigError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    field = loc[0] if loc else "?"
    if error["type"] == "extra_forbidden":
        return ConfigError("CDC_CONFIG", f"unknown setting {'.'.join(loc)!r} in the TOML file")
    setting = ENV_PREFIX + field.upper()
    if field not in env_values:
        setting = f"{field} in the CDC_CONFIG file"
    if len(loc) > 1:
        setting += " (" + ".".join(loc[1:]) + ")"
    message = str(error["msg"]).removeprefix("Value error, ")
    if field != "database_url" and "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return ConfigError(setting, message)
