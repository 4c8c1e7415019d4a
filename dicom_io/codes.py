"""Coded concepts used by the SEG and SR writers: one place for every code the agent puts on the wire.

Vertebra codes are SNOMED CT (see ``docs/anchors.md``, "Codes"); pydicom's ``codes.SCT`` carries the
same values. Two VerSe labels have no SNOMED CT concept: L6 (label 25, a sixth lumbar vertebra from
lumbarisation) and T13 (label 28, a thirteenth thoracic vertebra). They are coded in the private
coding scheme :data:`PRIVATE_SCHEME_DESIGNATOR` ("99SPINEAGENT": the "99" prefix is DICOM's convention
for private designators, PS3.16 section 8.2), whose identification item
:func:`private_coding_scheme_identification` is written into every SR and SEG that uses it, so a
receiver can look the scheme up. Code meanings are plain English ("Sixth lumbar vertebra") so a viewer
that does not know the scheme still shows a readable label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.labels import L6_LABEL, SACRUM_LABEL, T13_LABEL, VERTEBRA_NAMES

__all__ = [
    "ALGORITHM_FAMILY",
    "ALGORITHM_NAME",
    "ANATOMICAL_STRUCTURE",
    "CERTAINTY_OF_FINDING",
    "PERCENT",
    "PRIVATE_SCHEME_DESIGNATOR",
    "PRIVATE_SCHEME_NAME",
    "PROCESSING_ALGORITHM",
    "RESEARCH_USE_DISCLAIMER",
    "RESEARCH_USE_SHORT",
    "VERTEBRAL_COLUMN",
    "VERTEBRA_CODES",
    "ai_contributing_equipment",
    "private_coding_scheme_identification",
    "uses_private_scheme",
    "vertebra_code",
]

#: Coding Scheme Designator (SH, at most 16 characters) of the project's private codes.
PRIVATE_SCHEME_DESIGNATOR = "99SPINEAGENT"
#: Human-readable name of the private scheme (Coding Scheme Name, LO).
PRIVATE_SCHEME_NAME = "spine-agent vertebra variants"

#: Name written into Algorithm Identification (SEG segments, SR TID 4019) and Contributing Equipment.
ALGORITHM_NAME = "spine-agent"

#: What every result says about itself (SR comment; SEG and SR descriptions in short): the shipped
#: weights were trained on the project's synthetic phantoms only (docs/engine.md, model card).
RESEARCH_USE_DISCLAIMER = (
    "Research use only: not a medical device. Landmarks from spine-agent weights trained on synthetic CT "
    "phantoms."
)
#: The same in the few characters a Series or Content Description (LO, 64) leaves.
RESEARCH_USE_SHORT = "research use only"

#: (DCM 123110 "Artificial Intelligence"), the Algorithm Family of CID 7162.
ALGORITHM_FAMILY: Code = codes.DCM.ArtificialIntelligence

#: Segmented Property Category / Finding Category: (SCT 91723000 "Anatomical Structure"), CID 7150.
ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure

#: The vertebral column as a whole: (SCT 421060004 "Spine"), as CID 4031 / CID 7151 spell it.
VERTEBRAL_COLUMN: Code = codes.SCT.Spine

#: Purpose of Reference of the AI Contributing Equipment item, as the IHE Radiology "AI Results" (AIR)
#: profile specifies it (and MONAI Deploy's SEG writer emits it): (Newcode1, 99IHE, "Processing Algorithm").
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

#: Measurement concept for the engine's confidence: (DCM 111012 "Certainty of Finding"), the concept
#: DICOM's CAD templates use for a detector's certainty, expressed in percent.
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
#: UCUM "%" for :data:`CERTAINTY_OF_FINDING`.
PERCENT: Code = codes.UCUM.Percent

_L6 = Code("L6", PRIVATE_SCHEME_DESIGNATOR, "Sixth lumbar vertebra")
_T13 = Code("T13", PRIVATE_SCHEME_DESIGNATOR, "Thirteenth thoracic vertebra")

#: SNOMED CT concepts of the labels that have one: C1-C7, T1-T12, L1-L5 as "<name> vertebra" (e.g.
#: ``codes.SCT.C1Vertebra``), and the sacrum, which SNOMED CT codes as a whole (VerSe calls it S1).
_STANDARD: dict[int, Code] = {
    **{
        label: getattr(codes.SCT, f"{name}Vertebra")
        for label, name in VERTEBRA_NAMES.items()
        if label not in (L6_LABEL, T13_LABEL, SACRUM_LABEL)
    },
    SACRUM_LABEL: codes.SCT.Sacrum,
}

#: SNOMED CT (or private, for L6 and T13) code of every VerSe vertebra label (dicom_io.labels).
VERTEBRA_CODES: Mapping[int, Code] = MappingProxyType({**_STANDARD, L6_LABEL: _L6, T13_LABEL: _T13})


def vertebra_code(label: int) -> Code:
    """The code of a VerSe vertebra label; ``ValueError`` names the label if it is unknown."""
    try:
        return VERTEBRA_CODES[label]
    except KeyError:
        raise ValueError(f"no code for VerSe vertebra label {label}") from None


def uses_private_scheme(labels: Iterable[int]) -> bool:
    """Whether any of ``labels`` (VerSe label numbers) is coded in the private scheme."""
    return any(vertebra_code(label).scheme_designator == PRIVATE_SCHEME_DESIGNATOR for label in labels)


def private_coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """An item of Coding Scheme Identification Sequence (0008,0110) describing "99SPINEAGENT"."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME_DESIGNATOR,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization="spine-agent project",
    )


def ai_contributing_equipment(
    *, manufacturer: str, model_name: str, software_version: str, contribution_datetime: datetime
) -> Dataset:
    """The Contributing Equipment Sequence item that names the AI algorithm, IHE AIR style.

    IHE Radiology AI Results (AIR) asks result objects to carry, besides the acquisition equipment of
    the source, one item for the algorithm with Purpose of Reference (Newcode1, 99IHE, "Processing
    Algorithm"), its manufacturer, model name and software version. highdicom's
    ``ContributingEquipment`` only admits CID 7005 purposes, hence this plain item.
    """
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = manufacturer
    item.ManufacturerModelName = model_name
    item.SoftwareVersions = software_version
    item.ContributionDateTime = contribution_datetime.strftime("%Y%m%d%H%M%S.%f%z")
    item.ContributionDescription = "Automatic vertebra localization and labelling"
    return item
