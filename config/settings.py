"""The one typed settings object, loaded once from TOML plus ``SPINE_AGENT_*`` environment overrides.

Environment overrides use ``__`` between a section and a key, e.g. ``SPINE_AGENT_DICOM__PORT=11112`` or
``SPINE_AGENT_LEDGER__URL=postgresql+psycopg://...``. Lists and tables take JSON:
``SPINE_AGENT_DICOM__ALLOWED_CALLING_AES='["PACS1","PACS2"]'``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.errors import ConfigError

#: Where ``serve`` and the other commands look when neither ``--config`` nor ``SPINE_AGENT_CONFIG`` is set.
DEFAULT_CONFIG_PATH = Path("/etc/spine-agent/config.toml")

#: A ledger URL: dialect[+driver]://rest (SQLite and PostgreSQL are the two the ledger supports).
_LEDGER_URL = re.compile(r"^(?P<dialect>sqlite|postgresql)(\+\w+)?://(?P<rest>.*)$")

# DICOM PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError("an AE title of 1-16 printable ASCII characters without backslash")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(_Section):
    """Optional DICOM TLS on the SCP."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    #: CA bundle to verify client certificates with; unset = clients need no certificate.
    client_ca: Path | None = None

    @model_validator(mode="after")
    def _needs_files(self) -> TlsSettings:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("tls.enabled needs tls.certificate and tls.private_key")
        return self


class DicomSettings(_Section):
    """The Storage SCP the PACS sends CT series to."""

    ae_title: str = "SPINEAGENT"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    #: Calling AE titles allowed to associate; empty = any calling AE (a warning is logged at start).
    allowed_calling_aes: list[str] = Field(default_factory=list)
    #: Peer IP addresses allowed to associate; empty = any host.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Reject associations whose called AE title is not ours.
    require_called_ae: bool = True
    #: Associations served at once; one more is rejected (transient, local limit exceeded) and logged.
    max_associations: int = Field(default=10, ge=1)
    #: Seconds a new connection may stay silent before sending its association request; then it is
    #: closed (idle connections never hold a slot for long).
    idle_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds an established association may stay silent between two messages before it is aborted
    #: (a busy sender can pause between instances; Orthanc's DicomScpTimeout defaults to 30 s).
    network_timeout_s: float = Field(default=60.0, gt=0)
    #: Seconds a series must be quiet (no new instance) before it is queued (like Orthanc's StableAge).
    stable_age_s: float = Field(default=30.0, gt=0)
    #: A series with more instances than this is refused as a FAILED job.
    max_series_instances: int = Field(default=3000, ge=1)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]


class Destination(_Section):
    """A DICOM node the results (SEG + SR) are sent to."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    #: Send over DICOM TLS (PS3.15 B.1): the destination's certificate is verified against
    #: ``tls_ca_file`` (unset: the system's trusted CAs) and its host name (``tls_server_name``, else
    #: ``host``). A certificate that does not verify fails the attempt (retried like any connection error).
    tls: bool = False
    #: CA bundle (PEM) that signed the destination's certificate.
    tls_ca_file: Path | None = None
    #: Our client certificate (PEM) and its private key, for destinations that require one; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: The name the destination's certificate must hold, when it differs from ``host`` (e.g. host is an IP).
    tls_server_name: str | None = Field(default=None, min_length=1)
    #: After an interrupted attempt (a crash, or a C-STORE that got no answer), ask the destination with
    #: C-FIND (Study Root, IMAGE level) whether it already holds each instance that was in flight, and send
    #: only those it does not hold (exactly-once). A destination that does not answer C-FIND (DCMTK
    #: storescp; a PACS that does not let our calling AE query) makes the sender re-send them (at-least-once),
    #: logged at WARNING and in the ledger. Only ever used after an interruption; false: never ask, re-send.
    query_before_resend: StrictBool = True

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @model_validator(mode="after")
    def _tls_keys(self) -> Destination:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                f"destination {self.name!r}: tls_cert_file and tls_key_file go together "
                "(the client certificate and its private key)"
            )
        extra = [k for k in TLS_DESTINATION_KEYS if getattr(self, k) is not None]
        if extra and not self.tls:
            keys = ", ".join(extra)
            raise ValueError(f"destination {self.name!r}: {keys} set but tls = false; set tls = true")
        return self


#: A destination's TLS keys besides ``tls`` itself.
TLS_DESTINATION_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")


class StorageSettings(_Section):
    """Spool directory and disk limits."""

    spool_dir: Path = Path("spine-agent-data/spool")
    #: Below this many MiB free on the spool's file system the SCP answers 0xA700 (Out of Resources).
    disk_reserve_mb: int = Field(default=2048, ge=0)


class LedgerSettings(_Section):
    """The job ledger database."""

    #: SQLAlchemy URL: SQLite (default, WAL mode) or ``postgresql+psycopg://user@host/db``.
    url: str = "sqlite:///spine-agent-data/ledger.sqlite3"
    #: Seconds a claimed job's lease lasts; a crashed worker's job is reclaimed after it expires.
    lease_s: float = Field(default=900.0, gt=0)
    #: Attempts before a job is FAILED for good.
    max_attempts: int = Field(default=3, ge=1)
    #: A transient error (disk full, out of memory) puts the job back without spending an attempt and
    #: waits ``defer_base_s * 2**(n-1)`` seconds, at most ``defer_cap_s``, before it is claimed again.
    defer_base_s: float = Field(default=30.0, gt=0)
    defer_cap_s: float = Field(default=600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # Checked here so that `config check` refuses what the ledger would refuse at start.
        match = _LEDGER_URL.match(value)
        if match is None:
            raise ValueError(
                "sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or postgresql+psycopg://USER@HOST/DB"
            )
        if match.group("dialect") == "sqlite" and not match.group("rest").startswith("/"):
            raise ValueError("a SQLite file as sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH")
        return value


class EngineSettings(_Section):
    """The two-stage vertebra engine."""

    #: "auto" uses CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Weights directory; unset = the newest version shipped in the package's ``weights/``.
    weights_dir: Path | None = None


class DeliverySettings(_Section):
    """Sending results back; retries back off exponentially up to a cap."""

    calling_ae_title: str = "SPINEAGENT"
    retry_base_s: float = Field(default=10.0, gt=0)
    retry_cap_s: float = Field(default=600.0, gt=0)
    #: Attempts after which a delivery is given up (FAILED) when the peer keeps refusing.
    max_attempts: int = Field(default=50, ge=1)
    #: Seconds a sending attempt holds its delivery: other agents on the ledger skip it meanwhile, and
    #: after a crash mid-send it is sent again (only what the destination did not acknowledge) this late.
    lease_s: float = Field(default=300.0, gt=0)

    _ae = field_validator("calling_ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


#: A routing pattern: ``re:`` then a regular expression (searched anywhere in the value), otherwise a
#: glob (``*``, ``?``, ``[...]``) matched against the whole value; both case-insensitive.
REGEX_PREFIX = "re:"

# DICOM PS3.5 CS: upper-case letters, digits, space and underscore, at most 16 characters.
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")

#: The agent's own outputs (SEG, SR) and other non-image objects: never processed, whatever the config.
NEVER_ROUTED_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "DOC", "REG", "RTSTRUCT"})


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The case-insensitive regular expression a routing pattern stands for; use its ``search``.

    ``re:REGEX`` is searched anywhere in the value (anchor it with ``^...$``); a glob is translated and
    anchored, so it matches the whole value (``*spine*``, ``L?SPINE``).

    Raises ``ValueError`` for an empty pattern or a regular expression that does not compile.
    """
    if not pattern.strip():
        raise ValueError("a non-empty glob or re:REGEX pattern")
    if pattern.startswith(REGEX_PREFIX):
        body = pattern[len(REGEX_PREFIX) :]
        if not body:
            raise ValueError("a regular expression after re:")
        try:
            return re.compile(body, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"a valid regular expression after re: ({exc})") from None
    return re.compile(r"\A" + fnmatch.translate(pattern), re.IGNORECASE)  # a glob matches the whole value


def _check_patterns(value: list[str]) -> list[str]:
    for pattern in value:
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"{exc}, got {pattern!r}") from None
    return value


class RoutingSettings(_Section):
    """Which quiet series are processed; the others become SKIPPED jobs with the reason (docs/receive.md).

    Instances that are not CT images (the agent's own SEG and SR, any other non-image object) are never
    processed, whatever is configured here.
    """

    #: false = every received CT series is processed (the checks below are not applied).
    enabled: bool = True
    #: Modality (0008,0060) values processed; instances of other modalities are not counted.
    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    #: An instance whose Image Type (0008,0008) (or Enhanced CT Frame Type) holds one of these values is not
    #: counted (localizers / scouts / topograms by default).
    exclude_image_types: list[str] = Field(default_factory=lambda: ["LOCALIZER"])
    #: Fewest slices (frames of an Enhanced CT) left after the rules above; fewer = skipped.
    min_slices: int = Field(default=20, ge=1)
    #: Thickest Slice Thickness (0018,0050) processed, in mm (the median of the counted slices; a series
    #: without the attribute passes).
    max_slice_thickness_mm: float = Field(default=5.0, gt=0)
    #: Body Part Examined (0018,0015) patterns: if any are given, the value must match one (absent = skipped).
    include_body_parts: list[str] = Field(default_factory=list)
    #: Body Part Examined patterns that skip the series.
    exclude_body_parts: list[str] = Field(default_factory=list)
    #: Series Description (0008,103E) patterns: if any are given, the value must match one.
    include_series_descriptions: list[str] = Field(default_factory=list)
    #: Series Description patterns that skip the series (e.g. "*scout*", "re:dose|patient protocol").
    exclude_series_descriptions: list[str] = Field(default_factory=list)

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('at least one modality, e.g. ["CT"]')
        out = []
        for item in value:
            code = item.strip().upper()
            if not _CODE_STRING.match(code):
                raise ValueError(f'DICOM modality codes such as "CT", got {item!r}')
            if code in NEVER_ROUTED_MODALITIES:
                raise ValueError(f"image modalities; {code} objects (like our SEG/SR) are never processed")
            out.append(code)
        return out

    @field_validator("exclude_image_types")
    @classmethod
    def _image_types(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            code = item.strip().upper()
            if not _CODE_STRING.match(code):
                raise ValueError(f'Image Type values such as "LOCALIZER", got {item!r}')
            out.append(code)
        return out

    _patterns = field_validator(
        "include_body_parts",
        "exclude_body_parts",
        "include_series_descriptions",
        "exclude_series_descriptions",
    )(classmethod(lambda cls, v: _check_patterns(v)))


class RetentionSettings(_Section):
    """Cleanup of finished jobs' spool and outputs."""

    #: Finished jobs' files are removed after this many hours.
    max_age_h: float = Field(default=72.0, gt=0)
    #: When the spool's disk is fuller than this percentage, the oldest finished jobs go first.
    high_watermark_percent: float = Field(default=90.0, gt=0, le=100)
    #: How often the cleanup runs, in seconds.
    interval_s: float = Field(default=600.0, gt=0)


class HttpSettings(_Section):
    """Health and Prometheus metrics endpoint, and the admin dashboard on the same port."""

    bind_address: str = "127.0.0.1"
    #: 0 disables the HTTP endpoint.
    port: int = Field(default=8080, ge=0, le=65535)
    #: Serve the admin dashboard (/dashboard and /api/...); read-only unless an admin token is set.
    dashboard: bool = True
    #: File holding the admin token that enables the dashboard's actions (retry, cancel).
    admin_token_file: Path | None = None
    #: The admin token itself; meant for SPINE_AGENT_HTTP__ADMIN_TOKEN, prefer admin_token_file in TOML.
    admin_token: SecretStr | None = None
    #: Show each job's Accession Number and Series Description (read from the spooled DICOM headers while
    #: the series is in the spool) in the dashboard, its JSON API and ``spine-agent jobs list``, instead of
    #: UID fragments. Patient data: off by default; the dashboard needs no login to be read.
    show_patient_data: bool = False


class LoggingSettings(_Section):
    """Log output."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    """Everything the agent can be configured with. Built by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="SPINE_AGENT_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    destinations: list[Destination] = Field(default_factory=list)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dupes)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: SPINE_AGENT_* overrides what the TOML file (passed as init values) says.
        return (env_settings, init_settings)


def _describe(error: dict[str, Any]) -> str:
    """One readable clause for a pydantic error: key, value, expectation."""
    loc = ".".join(str(p) for p in error.get("loc", ()))
    kind = error.get("type")
    msg = str(error.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (check its spelling and section; `spine-agent config example` lists all)"
    if kind == "missing":
        return f"{loc}: required key is missing"
    for prefix in ("Value error, ", "Input should be ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    value: Any = error.get("input")
    if isinstance(value, dict):
        return f"{loc}: {msg}"
    return f"{loc} = {value!r}: expected {msg}"


def settings_from_mapping(data: dict[str, Any], origin: str = "configuration") -> Settings:
    """Validate a parsed TOML mapping (plus environment overrides); raise :class:`ConfigError`."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(dict(errors[0]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{origin}: {first}{more}") from None


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    """Parse TOML text, turning syntax errors into :class:`ConfigError`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None


def resolve_config_path(path: Path | None) -> Path | None:
    """The file to load: ``--config``, else ``SPINE_AGENT_CONFIG``, else the default path if it exists."""
    if path is not None:
        return path
    env = os.environ.get("SPINE_AGENT_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """Load settings from ``path`` (see :func:`resolve_config_path`) and the environment.

    Raises :class:`ConfigError` with one line naming the key, the value and what was expected.
    """
    resolved = resolve_config_path(path)
    if resolved is None:
        return settings_from_mapping({}, origin="defaults")
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {resolved}: {exc.strerror or exc}") from None
    return settings_from_mapping(parse_toml(text, str(resolved)), origin=str(resolved))
