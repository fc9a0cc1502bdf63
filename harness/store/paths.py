"""Names that become paths: job ids, slugs, and a check that a path stays inside its root.

Every name read from a run record, a spec, a sweep file or a plugin is untrusted text: a job id of
``../../x`` or a sweep named ``../../../x`` must never make occbench read or write outside the
store or the board's output folder. Use :func:`validate_job_id` for job ids, :func:`check_name`
where a user-chosen name must already be a plain file name (reject, naming the fix),
:func:`safe_name` where any text may be turned into one (slug), and :func:`inside` as the last
line before a path built from such names is opened.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

#: A job id: the first 20 hex digits (lowercase) of the job's sha256 (see ``harness.spec``).
JOB_ID_RE = re.compile(r"[0-9a-f]{20}")
#: A plain file name: no separator, no leading dot or dash (never ``.``/``..``, never an option).
SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")
MAX_NAME = 128


class UnsafePathError(ValueError):
    """A name that would make a path outside its folder, or is not a valid job id."""


def is_job_id(s: object) -> bool:
    """True for exactly 20 lowercase hex digits (a ``str``)."""
    return isinstance(s, str) and JOB_ID_RE.fullmatch(s) is not None


def validate_job_id(s: object, where: str = "") -> str:
    """``s`` if it is a job id (20 lowercase hex digits), else :class:`UnsafePathError`."""
    if not is_job_id(s):
        pre = f"{where}: " if where else ""
        raise UnsafePathError(f"{pre}job id {str(s)[:60]!r} is not 20 lowercase hex digits")
    return str(s)


def is_safe_name(s: object) -> bool:
    """True when ``s`` can be used as one file name as it is (see :data:`SAFE_NAME_RE`)."""
    return (isinstance(s, str) and len(s) <= MAX_NAME
            and SAFE_NAME_RE.fullmatch(s) is not None)


def check_name(s: object, what: str = "name") -> str:
    """``s`` if it is a plain file name, else :class:`UnsafePathError` saying what is allowed."""
    if not is_safe_name(s):
        raise UnsafePathError(
            f"{what} {str(s)[:60]!r} cannot be used as a file name: use letters, digits and "
            f". _ + @ = - (starting with a letter or digit, at most {MAX_NAME} characters)")
    return str(s)


def safe_name(name: str) -> str:
    """A file-name slug of any text: lowercase ``[a-z0-9._-]``, never starting with ``.``/``-``.

    Lowercase because macOS and Windows file systems ignore case (``A`` and ``a`` would be one
    file). A name that had to change gets 6 hex digits of its sha1, so different names stay
    different (``a/b`` and ``a-b`` do not collide).
    """
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "x"
    if s != name:
        s = f"{s[:40].rstrip('-.')}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return s


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` (absolute, symlinks resolved) if it lies inside ``root``; else UnsafePathError.

    Resolving follows symbolic links, so a link inside ``root`` pointing out of it is caught too.
    """
    r = Path(os.path.realpath(root))
    p = Path(os.path.realpath(path))
    if p != r and r not in p.parents:
        raise UnsafePathError(f"{path} is outside {root}; refusing to touch it")
    return p


__all__ = ["JOB_ID_RE", "UnsafePathError", "check_name", "inside", "is_job_id", "is_safe_name",
           "safe_name", "validate_job_id"]
