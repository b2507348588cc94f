"""Errors a user can cause: each carries one sentence that says what is wrong and where."""


class MicrorecError(Exception):
    """Base class: the entry scripts print the message and exit non-zero, without a traceback."""

    label = "error"  # the printed line: `error: <message>`
    exit_status = 1


class DataError(MicrorecError):
    """A data file is missing, malformed, or empty after filtering."""


class ConfigError(MicrorecError):
    """A configuration asks for something impossible (unknown name, missing channel, bad value)."""


class Diverged(MicrorecError):
    """Training produced a NaN or infinite loss: the model's numbers mean nothing any more."""


class Stopped(MicrorecError):
    """A run was stopped from outside (SIGTERM: `timeout`, `kill`, a SLURM preemption)."""

    label = "stopped"
    exit_status = 128 + 15  # what a shell reports for a process ended by SIGTERM


class WriteError(MicrorecError):
    """The system refused to write a file: a full disk, a file-size limit, a read-only folder."""
