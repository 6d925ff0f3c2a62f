"""The one exception type for mistakes a user can fix (bad path, bad flag, bad probe)."""


class SpikesortError(ValueError):
    """A user-facing error: its message is the one line the CLI prints."""


def one_line(text) -> str:
    """A message on one line (its lines joined), as the CLI and the batch summary print errors."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else "(no message)"
