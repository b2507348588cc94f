"""Writing output files safely (kept free of heavy imports, so light scripts can use it)."""

from __future__ import annotations

import errno
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from microrec.errors import WriteError

# The system refusing a write: a full disk or quota, a file-size limit, a read-only or
# forbidden folder, a folder where the file should go. Not a bug, so one sentence naming the
# file, not a traceback.
REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
           errno.EISDIR}
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Polars' writers pass on an errno


def refusal(e: Exception) -> int | None:
    """The errno of a refused write that `e` reports, else None."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (found := RUST_OS_ERROR.search(str(e))):
        code = int(found[1])
    return code if code in REFUSED else None


@contextmanager
def writing(path: Path):
    """Make `path`'s folder, and turn a refused write there or inside the block into one
    WriteError naming `path`."""
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()),
                           path.parent)
            raise WriteError(f"{path}: cannot be written: {blocker} is a file, not a "
                             "folder.") from None
        yield
    except Exception as e:
        code = refusal(e)
        if code is None:
            raise
        raise WriteError(f"{path}: cannot be written ({os.strerror(code)}).") from None


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` and move the result onto `path` in one step.

    The file gets the mode a plain open() gives (0666 less the umask). Whatever fails, the
    temporary file is removed and `path` keeps what it held; a refused write (`REFUSED`) is
    one WriteError naming `path`.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    with writing(path):
        # created as open() creates files: tempfile.mkstemp's would stay 0600 whatever the umask
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            write(str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
