"""Errors a user can cause: each carries a one-line message that names the problem and the fix."""


class UserError(Exception):
    """Bad input from the user (a path, a name, a file); the CLI prints it and exits with 2."""


class ModelLoadError(UserError):
    """A model could not be found, loaded or understood."""


class SiteError(UserError):
    """A site name is misspelled or out of range for the model."""


class CorpusError(UserError):
    """A text source is missing, empty, unreadable or not UTF-8."""


class SAEFileError(UserError):
    """An SAE folder is missing files, has bad config keys or corrupt weights, or does not fit the model."""


class RunError(UserError):
    """A run folder is in a state that the command cannot use (e.g. holds a different run)."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to `limit` characters: the
    reason a one-line error quotes from a library's longer one."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return reason if limit is None else reason[:limit]


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk is full: an OSError with ENOSPC, or DuckDB's own I/O error saying so."""
    import errno

    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)
