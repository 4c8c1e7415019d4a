"""The vertebra label table: VerSe label numbers, their names and their cranio-caudal order.

The one place the numbers live; the SNOMED CT codes (:mod:`dicom_io.codes`), the engine's outputs, the
phantoms' ground truth, the SEG/SR writers and readers all derive from it.

VerSe label numbers (anjany/verse): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6 (lumbarisation),
26 sacrum (VerSe's "S1"), 28 T13. VerSe reserves 27 for the coccyx, which nothing here produces, so it
has no name (``vertebra_name(27)`` raises) and no code.
"""

from __future__ import annotations

#: VerSe label numbers (anjany/verse): 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 28 T13.
VERTEBRA_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    26: "S1",
    28: "T13",
}

#: The label of each name (``"L3"`` -> 22); the inverse of :data:`VERTEBRA_NAMES`.
LABEL_BY_NAME: dict[str, int] = {name: label for label, name in VERTEBRA_NAMES.items()}

#: The variants without a SNOMED CT concept: a sixth lumbar and a thirteenth thoracic vertebra.
L6_LABEL = 25
T13_LABEL = 28
#: The sacrum as a whole (VerSe labels it like S1).
SACRUM_LABEL = 26

#: Vertebra labels in cranio-caudal anatomical order (T13 sits between T12 and L1).
ANATOMICAL_ORDER: tuple[int, ...] = (*range(1, 20), T13_LABEL, *range(20, 26))

#: The labels the engine localises: C1..L5 plus the L6 and T13 variants (sacrum excluded).
ENGINE_LABELS: tuple[int, ...] = ANATOMICAL_ORDER

#: Every label with a name, cranio-caudal: the vertebrae, then the sacrum (the order of SEG segments and
#: SR measurement groups).
CRANIO_CAUDAL: tuple[int, ...] = (*ANATOMICAL_ORDER, SACRUM_LABEL)


def vertebra_name(label: int) -> str:
    """The conventional name of a VerSe label ("L3"), or raise ValueError for an unknown label."""
    try:
        return VERTEBRA_NAMES[label]
    except KeyError:
        raise ValueError(f"unknown VerSe vertebra label {label}") from None
