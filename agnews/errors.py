class AGNewsError(Exception):
    """A user mistake or an unusable input: the CLI prints its message as one line, without a traceback."""
