from __future__ import annotations

import pytest

from dicom_io.codes import (
    PRIVATE_SCHEME_DESIGNATOR,
    VERTEBRA_CODES,
    private_coding_scheme_identification,
    uses_private_scheme,
    vertebra_code,
)
from dicom_io.labels import VERTEBRA_NAMES

# docs/anchors.md, "Codes": SNOMED CT C1-C7, T1-T12, L1-L5, sacrum.
ANCHOR_SCT = [
    *("14806007", "39976000", "113205007", "5329002", "36978003", "36054005", "87391001"),
    *("64864005", "53733008", "1626008", "73071006", "56401006", "45296009", "62487009", "11068009"),
    *("82687006", "7610001", "12989004", "23215003"),
    *("66794005", "14293000", "36470004", "11994002", "49668003"),
]


def test_every_verse_label_has_a_code() -> None:
    assert set(VERTEBRA_CODES) == set(VERTEBRA_NAMES)


def test_standard_vertebrae_use_the_anchored_snomed_codes() -> None:
    standard = [*range(1, 25)]
    assert [vertebra_code(label).value for label in standard] == ANCHOR_SCT
    assert all(vertebra_code(label).scheme_designator == "SCT" for label in standard)
    assert vertebra_code(26).value == "54735007"


def test_l6_and_t13_are_coded_in_the_private_scheme() -> None:
    assert (vertebra_code(25).value, vertebra_code(25).scheme_designator) == ("L6", PRIVATE_SCHEME_DESIGNATOR)
    assert (vertebra_code(28).value, vertebra_code(28).scheme_designator) == (
        "T13",
        PRIVATE_SCHEME_DESIGNATOR,
    )
    assert vertebra_code(25).meaning == "Sixth lumbar vertebra"
    assert uses_private_scheme([20, 25]) and not uses_private_scheme([20, 21])
    item = private_coding_scheme_identification()
    assert item.CodingSchemeDesignator == PRIVATE_SCHEME_DESIGNATOR and item.CodingSchemeName
    assert len(PRIVATE_SCHEME_DESIGNATOR) <= 16  # SH


def test_unknown_label_is_refused_with_its_number() -> None:
    with pytest.raises(ValueError, match="27"):
        vertebra_code(27)
