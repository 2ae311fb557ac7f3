"""The runtime's input error (its own module, so every runner and launcher can raise it without importing another)."""


class InputError(ValueError):
    """An input the compiled shapes or the device cannot take (one line, says what to change)."""
