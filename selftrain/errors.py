"""The one exception type the CLI and API turn into a sentence for the user."""


class SelftrainError(Exception):
    """A problem the user can fix, stated in one sentence (no traceback is shown)."""
