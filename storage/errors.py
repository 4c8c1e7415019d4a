"""Exceptions raised by the ledger."""


class LedgerError(RuntimeError):
    """Base class for ledger errors."""


class IllegalTransition(LedgerError):
    """A job or delivery was asked to move between states the state machine does not allow.

    The message names the entity id and both states. Nothing was changed; re-read the row and decide again.
    """


class NotFound(LedgerError, LookupError):
    """A job, series or delivery id does not exist in the ledger."""
