"""Errors a user can act on.

A `UserError` carries one line that names the problem and the fix. The CLI prints it and exits with
status 2, without a traceback unless `--debug` is given. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and the fix in one line."""

    exit_status = 2
