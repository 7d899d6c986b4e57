class AGNewsError(Exception):
    """A user mistake or an unusable input: the CLI prints its message as one line, without a traceback."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped `fit` after saving `last.ckpt`; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
