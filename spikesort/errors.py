"""The one exception type for mistakes a user can fix (bad path, bad flag, bad probe)."""


class SpikesortError(ValueError):
    """A user-facing error: its message is the one line the CLI prints."""
