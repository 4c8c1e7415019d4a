"""Typed settings: TOML file plus ``SPINE_AGENT_*`` environment overrides, validated at start."""

from importlib import resources

from config.errors import ConfigError
from config.settings import (
    DEFAULT_CONFIG_PATH,
    DeliverySettings,
    Destination,
    DicomSettings,
    EngineSettings,
    HttpSettings,
    LedgerSettings,
    LoggingSettings,
    RetentionSettings,
    RoutingSettings,
    Settings,
    StorageSettings,
    TlsSettings,
    compile_pattern,
    load_settings,
    parse_toml,
    resolve_config_path,
    settings_from_mapping,
)


def example_toml() -> str:
    """The commented example configuration with every key at its default."""
    return resources.files("config").joinpath("example.toml").read_text(encoding="utf-8")


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "DeliverySettings",
    "Destination",
    "DicomSettings",
    "EngineSettings",
    "HttpSettings",
    "LedgerSettings",
    "LoggingSettings",
    "RetentionSettings",
    "RoutingSettings",
    "Settings",
    "StorageSettings",
    "TlsSettings",
    "compile_pattern",
    "example_toml",
    "load_settings",
    "parse_toml",
    "resolve_config_path",
    "settings_from_mapping",
]
