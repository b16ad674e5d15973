"""The logical mode's slot name when CDC_SLOT_NAME is unset: derived from the database, so two
databases of one server never share it, unless this database already has the old default."""

from __future__ import annotations

import re

from cdc.capture.slots import LEGACY_SLOT_NAME, choose_slot_name, default_slot_name

VALID = re.compile(r"^[a-z0-9_]{1,63}$")  # what PostgreSQL accepts as a slot name


def test_the_default_is_cdc_and_the_database_name() -> None:
    assert default_slot_name("shop") == "cdc_shop"
    assert default_slot_name("legacy_2") == "cdc_legacy_2"


def test_names_a_slot_cannot_hold_are_made_valid_and_stay_apart() -> None:
    names = ["Shop", "shop-eu", "shop.eu", "shop eu", "magasin_é", "x" * 63, "x" * 64, "shop"]
    slots = [default_slot_name(name) for name in names]
    assert all(VALID.match(slot) for slot in slots), slots
    assert len(set(slots)) == len(names)  # "Shop" and "shop" differ, and so do the long ones


def test_a_configured_name_wins_then_the_old_default_of_this_database() -> None:
    assert choose_slot_name("mine", "shop", "shop") == "mine"
    # set up before the default was derived: the slot keeps its name (and its position)
    assert choose_slot_name(None, "shop", "shop") == LEGACY_SLOT_NAME
    # the old default belongs to another database of the server, or does not exist
    assert choose_slot_name(None, "shop", "billing") == "cdc_shop"
    assert choose_slot_name(None, "shop", None) == "cdc_shop"
