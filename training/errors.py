"""The one error type a user can fix: the runner prints it as one line and exits non-zero."""


class UserError(Exception):
    """A bad input (config, flag, data folder) that the user can fix; the message says how."""
