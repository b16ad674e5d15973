"""JSON text with every digit kept: read, written back as it was, and the one rule that makes a
Decimal a plain number."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest

from cdc.bus.jsontext import (
    exact_json,
    json_object,
    loads_exact,
    orjson_default,
    plain_json,
    plain_number,
)


def test_fractions_are_read_as_decimals_with_every_digit() -> None:
    assert loads_exact('{"n": 1.000000000000000000001, "i": 7}') == {
        "n": Decimal("1.000000000000000000001"),
        "i": 7,
    }
    assert loads_exact("[1.50]") == [Decimal("1.50")]
    assert json_object('{"a": 0.1}') == {"a": Decimal("0.1")}
    with pytest.raises(ValueError, match="row image is not a JSON object"):
        json_object("[1]")


@pytest.mark.parametrize(
    ("text", "number"),
    [("2", 2), ("2.0", 2), ("-0", 0), ("1.5", 1.5), ("1E+5", 100000.0), ("1e2", 100.0)],
)
def test_a_decimal_is_an_int_when_whole_and_written_without_exponent(
    text: str, number: int | float
) -> None:
    value = plain_number(Decimal(text))
    assert value == number and type(value) is type(number)


def test_plain_json_and_orjson_apply_the_same_rule_inside_documents() -> None:
    parsed = loads_exact('{"a": [1.0, 2.5, {"b": 3E1}], "s": "x", "z": null}')
    plain = plain_json(parsed)
    assert plain == {"a": [1, 2.5, {"b": 30.0}], "s": "x", "z": None}
    assert orjson.dumps(parsed, default=orjson_default) == orjson.dumps(plain)
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        orjson_default(object())


def test_exact_json_keeps_numbers_as_written() -> None:
    value = {"a": Decimal("12.50"), "b": [1, Decimal("1E+5"), None, True], "c": 'é"', "d": {}}
    assert exact_json(value) == '{"a":12.50,"b":[1,1E+5,null,true],"c":"é\\"","d":{}}'
    assert json.loads(exact_json(value), parse_float=Decimal) == value
    assert exact_json([]) == "[]" and exact_json("\u2028") == '"\u2028"'
