"""Exceptions raised by the config package."""


class ConfigError(ValueError):
    """A configuration file or override is invalid.

    Raised at start; the message is one line naming the key, the offending value and what is expected.
    Recover by fixing the file (``spine-agent config check FILE``) or the ``SPINE_AGENT_*`` variable.
    """
