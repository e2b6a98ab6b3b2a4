"""Errors a user can act on: printed as one line, never as a traceback."""


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


class UserError(Exception):
    """Something the user can fix (credentials, region, a stack not deployed): exit status 1, one line."""
