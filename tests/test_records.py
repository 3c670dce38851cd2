"""Record Ids: the 15-character form the Salesforce UI shows, the 18-character one the API returns."""

from __future__ import annotations

import pytest

from worker.records import full_record_id


@pytest.mark.parametrize(
    ("given", "full"),
    [
        ("a01M00000062mPg", "a01M00000062mPgIAI"),
        ("001M000000qfPyS", "001M000000qfPySIAU"),
        ("0F9E000000092w2", "0F9E000000092w2KAA"),
        ("AbCdEfGhIjKlMnO", "AbCdEfGhIjKlMnOVKV"),
        ("aBcDEfgHIJKLMNO", "aBcDEfgHIJKLMNO025"),
        ("006000000000001", "006000000000001AAA"),
        ("006DmP000000004AAA", "006DmP000000004AAA"),  # 18 characters: as given
        (" 0F9E000000092w2 ", "0F9E000000092w2KAA"),  # pasted with spaces
    ],
)
def test_a_15_character_id_gets_its_case_safe_suffix(given: str, full: str) -> None:
    assert full_record_id(given) == full


@pytest.mark.parametrize(
    "bad", ["", "006", "006DmP00000000", "006DmP000000004AA", "006DmP00000000-AAA"]
)
def test_anything_else_is_not_an_id(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a record Id"):
        full_record_id(bad)
