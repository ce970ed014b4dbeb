"""The one exception type the CLI reports as a single line (no stack trace), and the exit codes it uses."""

# Every user mistake (a config key or value, a path, a data row) exits with this code, whether Hydra or sposd
# found it; 130 is a stop by Ctrl-C (128 + SIGINT).
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A problem the user can fix (bad path, malformed data, mismatched settings): reported as one line."""
