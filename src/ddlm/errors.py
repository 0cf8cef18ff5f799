"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a file, a record, a flag, a template).
The CLI prints its message on one line and exits with code 2, without a traceback; anything
else that escapes is a bug in ddlm and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user. The message must name the file, record, position or flag."""

    exit_code = 2
