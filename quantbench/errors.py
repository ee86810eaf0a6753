"""The one exception type users see: its message says what went wrong and what to do."""


class QuantbenchError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""
