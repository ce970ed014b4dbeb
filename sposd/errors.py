"""The one exception type the CLI reports as a single line (no stack trace)."""


class UserError(ValueError):
    """A problem the user can fix (bad path, malformed data, mismatched settings): reported as one line."""
