"""The one exception type a user sees as a clean, one-line error (the CLI prints it and exits 1)."""


class WorldModelsError(Exception):
    """A problem with the user's input or environment: bad config, missing or malformed file, NaN loss.

    Raise it with a message that says what is wrong and what to do; the CLI prints only that line.
    """
