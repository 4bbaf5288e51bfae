"""Errors a user can cause and fix.

A `UserError` is printed by the CLI as one line (no traceback) and exits with code 2.
Its message names what was wrong and how to fix it.
"""


class UserError(Exception):
    """A mistake in the command line, config or input that the user can fix."""
