"""The memory of codes confirmed in the slots of a lock that masks them (both radio drivers)."""

from __future__ import annotations

from gatewayd.confirmed_codes import ConfirmedCodes, code_digest, same_code


def test_a_slot_matches_only_the_code_confirmed_there_and_only_once() -> None:
    codes = ConfirmedCodes()
    codes.confirmed(3, code_digest("48213"))
    assert not codes.take(4, code_digest("48213"))  # another slot
    assert not codes.take(3, code_digest("48214"))  # another code: and the slot is forgotten
    assert not codes.take(3, code_digest("48213"))
    codes.confirmed(3, code_digest("48213"))
    assert codes.take(3, code_digest("48213"))
    assert not codes.take(3, code_digest("48213"))  # a write started: it must be confirmed again


def test_forgetting_a_slot_or_all_of_them() -> None:
    codes = ConfirmedCodes()
    for slot in (1, 2, 3):
        codes.confirmed(slot, code_digest(f"{slot}0417"))
    codes.forget(2)
    codes.forget(9)  # a slot never confirmed
    assert not codes.take(2, code_digest("20417"))
    assert len(codes) == 2
    codes.forget_all()
    assert len(codes) == 0
    assert not codes.take(1, code_digest("10417"))


def test_the_digest_is_keyed_and_holds_no_digits() -> None:
    digest = code_digest("80417")
    assert digest == code_digest("80417")
    assert digest != code_digest("80418")
    assert b"80417" not in digest
    assert "80417" not in repr(ConfirmedCodes())


def test_a_read_back_that_is_not_ascii_is_another_code_not_an_exception() -> None:
    assert same_code("80417", "80417")
    assert not same_code("80418", "80417")
    assert not same_code("8041\u00e9", "80417")
    assert not same_code("", "80417")
