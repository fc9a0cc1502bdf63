"""Which cached rows of the board's row pass still match their runs' files (stat keys).

A rebuild of a board of 100,000 runs checks about 500,000 files with ``stat``: a fifth of the
rebuild. Threads do not help (the GIL); processes do. This module imports only ``os`` and
``sys`` so that it also runs as a helper program started with ``python -I -S`` (no site, no
package imported: it starts in milliseconds), reading its share of the work on stdin and
writing the answers on stdout. The building process checks its own share with the same
:func:`check`.

Input (UTF-8 with surrogate escapes, as file names are): a header line of the runs, labels
and origins folders and the names of a run's own files, tab-separated; then one line per run:
``job_id  metrics_folder  has_origin  cached_key`` (``metrics_folder`` empty when the shown
protocol is not a folder name: the key then holds ``?``; ``has_origin`` 1 or 0). Output: one
byte per run, ``1`` when the cached key is the run's key now, else ``0``.

The key of a run is the text :class:`occbench.leaderboard.table._Keys` makes: the stat text
(``size.mtime_ns.inode``, ``-`` for no file) of each of its own files, of its metrics file,
its labels file and its origin mark, ``|``-separated, then ``#`` and the labels digest.
"""

from __future__ import annotations

import os
import sys


def stat_text(p: str) -> str:
    """``size.mtime_ns.inode`` of the file at ``p``, or ``-`` when there is none."""
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        return "-"
    return f"{st.st_size}.{st.st_mtime_ns}.{st.st_ino}"


def derived_text(jid: str, metrics_dir: str | None, labels: str, origins_dir: str,
                 has_origin: bool) -> str:
    """The key's part after the run's own files: its metrics file (``?`` when the protocol
    is not a folder name, ``metrics_dir`` None), its labels file's stat text (``labels``)
    and its origin mark (``-`` when it has none)."""
    m = stat_text(f"{metrics_dir}/{jid}.json") if metrics_dir else "?"
    o = stat_text(f"{origins_dir}/{jid}.json") if has_origin else "-"
    return f"{m}|{labels}|{o}"


def check(header: list[str], lines: list[str]) -> bytes:
    """For each line (see the module docstring), ``1`` if its cached key is still the run's
    key, else ``0``."""
    runs, labels_dir, origins_dir, *names = header
    labels: dict[str, str] = {}
    out = bytearray(len(lines))
    for k, line in enumerate(lines):
        jid, md, has_origin, key = line.split("\t", 3)
        digest = key.rpartition("#")[2]
        lab = labels.get(digest)
        if lab is None:
            lab = labels[digest] = stat_text(f"{labels_dir}/{digest}.parquet")
        d = f"{runs}/{jid}/"
        parts = [stat_text(d + n) for n in names]
        parts.append(derived_text(jid, md or None, lab, origins_dir, has_origin == "1"))
        out[k] = 49 if key == "|".join(parts) + "#" + digest else 48  # "1" / "0"
    return bytes(out)


def main() -> None:
    text = os.fsdecode(sys.stdin.buffer.read())
    header, _, body = text.partition("\n")
    sys.stdout.buffer.write(check(header.split("\t"), body.split("\n") if body else []))


if __name__ == "__main__":
    main()
