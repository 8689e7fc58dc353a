"""The one exception type a user sees as a single line, not a traceback."""


class SoloError(Exception):
    """A problem the user can fix: its message says what to do."""
