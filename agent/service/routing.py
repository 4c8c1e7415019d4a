"""Routing rules: which quiet series versions are processed, and why the others are skipped.

The quiet timer (:mod:`agent.service.scheduler`) asks a :class:`SeriesRouter` about every series version
it is about to queue. The router reads the headers (no pixel data) of exactly the instances the job would
read (the version's and the earlier versions' instances, as the worker links them) and applies
``[routing]`` (:class:`config.RoutingSettings`) with :func:`skip_reason`. A reason makes the job
SKIPPED instead of QUEUED, in the same ledger transaction that closes the version
(:meth:`storage.ledger.Ledger.close_quiet_series`): never run, never delivered, never retried.

The rules, in the order they are applied (the first one that leaves nothing decides the reason):

1. always, even with ``routing.enabled = false``: only CT images are processed (CT Image Storage, Enhanced
   and Legacy Converted Enhanced CT, Modality not SEG/SR/...): the agent's own SEG and SR and any other
   non-image object never become a job that runs;
2. ``routing.modalities``: instances of other modalities are not counted;
3. ``routing.exclude_image_types``: instances whose Image Type (or the Enhanced CT shared Frame Type)
   holds one of these values (LOCALIZER) are not counted;
4. ``routing.min_slices``: the counted slices (frames of an Enhanced CT) must be at least this many;
5. ``routing.max_slice_thickness_mm``: the median Slice Thickness of the counted slices must not exceed it;
6. ``routing.include_/exclude_body_parts`` on Body Part Examined, then
   ``routing.include_/exclude_series_descriptions`` on Series Description (patterns: glob, or ``re:REGEX``,
   case-insensitive).

Reasons never carry patient data: Series Description values are not repeated (only the pattern that
matched), Body Part Examined is a coded string (``LSPINE``) and is named.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from config import RoutingSettings, compile_pattern
from config.settings import NEVER_ROUTED_MODALITIES
from storage import Ledger, Series
from storage.spool import Spool

log = logging.getLogger(__name__)

#: The SOP classes the engine reads; anything else in a series is never processed.
CT_IMAGE_SOP_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)

#: What the router reads of each instance (``specific_tags``: no pixel data, no per-frame groups).
HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "ImageType",
    "NumberOfFrames",
    "SliceThickness",
    "BodyPartExamined",
    "SeriesDescription",
    "SharedFunctionalGroupsSequence",
]


@dataclass(frozen=True)
class InstanceHeader:
    """The header values of one instance that routing looks at."""

    sop_class_uid: str
    modality: str
    #: Image Type values, plus the shared Frame Type values of an Enhanced CT, upper case.
    image_type: tuple[str, ...]
    #: Slices this instance contributes: 1, or Number of Frames.
    frames: int
    slice_thickness_mm: float | None
    body_part: str | None
    series_description: str | None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceHeader:
        values = list(_multi(ds.get("ImageType")))
        shared = ds.get("SharedFunctionalGroupsSequence")
        thickness = _float(ds.get("SliceThickness"))
        if shared:
            groups = shared[0]
            for item in groups.get("CTImageFrameTypeSequence") or []:
                values.extend(_multi(item.get("FrameType")))
            for item in groups.get("PixelMeasuresSequence") or []:
                thickness = thickness if thickness is not None else _float(item.get("SliceThickness"))
        try:
            frames = max(1, int(ds.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            frames = 1
        return cls(
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            image_type=tuple(v.strip().upper() for v in values if v.strip()),
            frames=frames,
            slice_thickness_mm=thickness,
            body_part=_text(ds.get("BodyPartExamined")),
            series_description=_text(ds.get("SeriesDescription")),
        )

    @property
    def is_ct_image(self) -> bool:
        return self.sop_class_uid in CT_IMAGE_SOP_CLASSES and self.modality not in NEVER_ROUTED_MODALITIES


def _multi(value: Any) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return value.split("\\")
    return (str(v) for v in value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def read_header(path: Path) -> InstanceHeader:
    """The routing header of one DICOM file (raises whatever pydicom raises for an unreadable file)."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    return InstanceHeader.from_dataset(ds)


def _sop_class_name(uid: str) -> str:
    if not uid:
        return "no SOP class"
    name = UID(uid).name
    return name if name and name != uid else f"SOP class {uid}"


def _listing(values: Iterable[str]) -> str:
    return "[" + ", ".join(sorted(set(values))) + "]"


def _first_match(patterns: Sequence[str], value: str) -> str | None:
    for pattern in patterns:
        if compile_pattern(pattern).search(value):
            return pattern
    return None


def skip_reason(headers: Sequence[InstanceHeader], rules: RoutingSettings) -> str | None:
    """Why a series with these instance headers is not processed, or None to process it.

    Every reason starts with ``skipped: `` and names the ``routing.`` key that decided it. A series
    without any readable header is processed (the loader then says what is wrong with it).
    """
    if not headers:
        return None
    images = [h for h in headers if h.is_ct_image]
    if not images:
        kinds = _listing(
            f"{h.modality or 'no modality'} ({_sop_class_name(h.sop_class_uid)})" for h in headers
        )
        return (
            f"skipped: no CT image among {len(headers)} instance(s), only {kinds}; "
            "SEG, SR and other non-image objects are never processed"
        )
    if not rules.enabled:
        return None
    kept = [h for h in images if h.modality in rules.modalities]
    if not kept:
        found = _listing(h.modality or "(none)" for h in images)
        return f"skipped: modality {found.strip('[]')} not in routing.modalities {_listing(rules.modalities)}"
    excluded = set(rules.exclude_image_types)
    counted = [h for h in kept if not excluded.intersection(h.image_type)]
    left_out = len(kept) - len(counted)
    if not counted:
        hits = _listing(v for h in kept for v in h.image_type if v in excluded)
        return (
            f"skipped: all {len(kept)} instance(s) have ImageType {hits.strip('[]')} "
            "(routing.exclude_image_types)"
        )
    slices = sum(h.frames for h in counted)
    if slices < rules.min_slices:
        note = f" ({left_out} instance(s) left out by routing.exclude_image_types)" if left_out else ""
        return f"skipped: {slices} slices < routing.min_slices {rules.min_slices}{note}"
    thicknesses = [h.slice_thickness_mm for h in counted if h.slice_thickness_mm is not None]
    if thicknesses:
        thickness = statistics.median(thicknesses)
        if thickness > rules.max_slice_thickness_mm + 1e-6:
            return (
                f"skipped: slice thickness {thickness:g} mm > routing.max_slice_thickness_mm "
                f"{rules.max_slice_thickness_mm:g}"
            )
    body_part = next((h.body_part for h in counted if h.body_part), None)
    if rules.include_body_parts and (
        body_part is None or _first_match(rules.include_body_parts, body_part) is None
    ):
        return (
            f"skipped: BodyPartExamined {body_part or '(absent)'} matches none of "
            f"routing.include_body_parts {rules.include_body_parts}"
        )
    if body_part is not None:
        hit = _first_match(rules.exclude_body_parts, body_part)
        if hit is not None:
            return f"skipped: BodyPartExamined {body_part} matches routing.exclude_body_parts {hit!r}"
    description = next((h.series_description for h in counted if h.series_description), None)
    if rules.include_series_descriptions and (
        description is None or _first_match(rules.include_series_descriptions, description) is None
    ):
        what = "(absent) matches none of" if description is None else "matches none of"
        return (
            f"skipped: SeriesDescription {what} routing.include_series_descriptions "
            f"{rules.include_series_descriptions}"
        )
    if description is not None:
        hit = _first_match(rules.exclude_series_descriptions, description)
        if hit is not None:
            return f"skipped: SeriesDescription matches routing.exclude_series_descriptions {hit!r}"
    return None


class SeriesRouter:
    """Decides about one series version from its files in the spool (the ledger's ``route`` callback)."""

    def __init__(self, rules: RoutingSettings, ledger: Ledger, spool: Spool) -> None:
        self.rules = rules
        self.ledger = ledger
        self.spool = spool

    def files(self, series: Series) -> list[Path]:
        """The files the version's job would read: its instances and the earlier versions' (newest record
        of each SOP Instance UID), or the whole folder for a version recorded before instances were kept."""
        instances = self.ledger.version_instances(series.id)
        if not instances:
            return sorted(self.spool.resolve(series.spool_path).glob("*.dcm"))
        return [
            self.spool.instance_path(series.study_instance_uid, series.series_instance_uid, sop)
            for sop in sorted(instances)
        ]

    def headers(self, series: Series) -> list[InstanceHeader]:
        """The routing headers of the version's files; unreadable or missing files are left out (the
        loader reports them if the series is processed)."""
        headers = []
        for path in self.files(series):
            try:
                headers.append(read_header(path))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the loader's to report
                log.debug("routing: %s unreadable (%s), not counted", path, exc)
        return headers

    def __call__(self, series: Series) -> str | None:
        return skip_reason(self.headers(series), self.rules)
