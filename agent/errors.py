"""Exceptions of the agent package."""


class UserError(Exception):
    """Something the user asked for cannot be done (bad argument, missing file, unreachable peer).

    The CLI prints the message as one line and exits non-zero; no traceback.
    """
