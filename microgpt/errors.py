"""The one exception for mistakes a user can fix (a missing file, a nonsense number).
The command line prints its message as a single line and exits with its code (2 unless said): no
traceback."""


class UserError(Exception):
    """Raised with a message that names the problem and the fix."""

    exit_code = 2
