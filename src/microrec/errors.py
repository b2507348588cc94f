"""Errors a user can cause: each carries one sentence that says what is wrong and where."""


class MicrorecError(Exception):
    """Base class: the entry scripts print the message and exit non-zero, without a traceback."""


class DataError(MicrorecError):
    """A data file is missing, malformed, or empty after filtering."""


class ConfigError(MicrorecError):
    """A configuration asks for something impossible (unknown name, missing channel, bad value)."""


class WriteError(MicrorecError):
    """The system refused to write a file: a full disk, a file-size limit, a read-only folder."""
