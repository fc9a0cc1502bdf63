"""Readers for the official on-disk formats of the benchmark datasets.

Every reader raises :class:`~occbench.harness.api.DatasetFormatError` naming the file and the fix
when a file exists but cannot be parsed, and :class:`~occbench.harness.api.DatasetNotFoundError`
when it is missing. Images and frames come back as ``uint8`` arrays ``(N, H, W, C)``.

Formats covered: IDX (MNIST, Fashion-MNIST; gzipped or raw), CIFAR-10 and CIFAR-100 python pickles,
GTSRB semicolon CSVs and PPM images, UCSD ``UCSDped2.m`` ground truth, ``ped2.mat``, Avenue
``N_label.mat`` pixel masks, AVI videos (OpenCV) and image-folder frame sequences.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from occbench.harness.api import DatasetFormatError, DatasetNotFoundError

#: Extensions recognised as frames / images in folder layouts (lower case).
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm")

# cv2 uses its own thread pool per call; with 2-core CI machines and DataLoader workers this
# oversubscribes, so keep OpenCV single-threaded: we parallelise over files, not pixels.
cv2.setNumThreads(1)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file (the official checksums of these datasets are MD5)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def stat_fingerprint(paths: Iterable[Path], extra: Any = None, mtime: bool = True) -> str:
    """Stat key: hash of (name, size[, mtime, ctime, inode]) of each file plus ``extra`` (16 hex).

    No file content is read, so it is cheap even for thousands of frames: a cache-validity key
    (frame cache, Avenue mask memo), never a job identity (that is
    :func:`occbench.datasets.digest.content_fingerprint`, which hashes the bytes). Names are the
    last two path components (``01/000.jpg``). With ``mtime=True`` any rewrite of a file changes
    it, even one that restores the old mtime (the ctime still moves).
    """
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        name = "/".join(p.parts[-2:])
        try:
            st = p.stat()
        except OSError:
            h.update(f"{name}:missing".encode())
            continue
        stamp = f":{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}" if mtime else ""
        h.update(f"{name}:{st.st_size}{stamp}\n".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def first_existing(candidates: Sequence[Path]) -> Path | None:
    """The first path of ``candidates`` that exists, else ``None``."""
    for c in candidates:
        if c.exists():
            return c
    return None


def natural_key(s: str) -> list[Any]:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in natural order (``000.jpg``, ``001.jpg`` ...)."""
    # os.scandir: the entry type comes with the listing, no stat per file (4,560 for Ped2)
    with os.scandir(folder) as it:
        names = [e.name for e in it
                 if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file()]
    return [folder / n for n in sorted(names, key=natural_key)]


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}


def find_idx(folder: Path, stem: str) -> Path | None:
    """``stem`` (e.g. ``train-images-idx3-ubyte``) as ``.gz`` or raw in ``folder``.

    Also accepts the dotted variant some mirrors use (``train-images.idx3-ubyte``).
    """
    names = [stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")]
    return first_existing([folder / n for n in names])


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped if the name ends in ``.gz``) into an array of its native shape."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"IDX file {path} does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetFormatError(
            f"{path}: cannot read ({exc}); the file is truncated or not gzip — download it again"
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex()}); "
            "expected the official MNIST/Fashion-MNIST files, download them again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file has "
            f"{len(raw)} bytes; the file is truncated or corrupt — download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


# --------------------------------------------------------------------------------------------
# CIFAR-10 python pickle batches
# --------------------------------------------------------------------------------------------


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch → ``(images (N, 32, 32, 3) uint8, labels (N,) int64)``."""
    d = _load_pickle(path, "CIFAR-10 python batch", "extract cifar-10-python.tar.gz again")
    try:
        data = d.get(b"data", d.get("data"))
        labels = d.get(b"labels", d.get("labels"))
        arr = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        lab = np.asarray(labels, dtype=np.int64)
    except Exception as exc:  # missing keys, wrong sizes
        raise DatasetFormatError(
            f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
            "extract cifar-10-python.tar.gz again"
        ) from exc
    if len(arr) != len(lab):
        raise DatasetFormatError(f"{path}: {len(arr)} images but {len(lab)} labels")
    return np.ascontiguousarray(arr), lab


def read_cifar_meta(path: Path) -> list[str]:
    """Class names from ``batches.meta``."""
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        names = d.get(b"label_names", d.get("label_names"))
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except Exception as exc:
        raise DatasetFormatError(f"{path}: cannot read CIFAR-10 meta ({exc})") from exc


# --------------------------------------------------------------------------------------------
# CIFAR-100 python pickles (``cifar-100-python/{train,test,meta}``)
# --------------------------------------------------------------------------------------------

_CIFAR100_FIX = ("extract cifar-100-python.tar.gz again (`occbench data fetch cifar100`, or "
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)")


def _load_pickle(path: Path, what: str, fix: str) -> dict[Any, Any]:
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"{what} {path} does not exist; {fix}")
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")  # the official files are Python 2 pickles
    except Exception as exc:  # truncated files raise EOFError, UnpicklingError, ValueError, ...
        raise DatasetFormatError(
            f"{path}: not a {what} ({type(exc).__name__}: {exc}); the file is truncated or "
            f"corrupt — {fix}"
        ) from exc
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{path}: not a {what} (a {type(d).__name__}, not a dict); {fix}")
    return d


def _key(d: dict[Any, Any], key: str) -> Any:
    # Python 2 pickles have bytes keys; a re-pickled copy may have str keys
    return d.get(key.encode(), d.get(key))


def read_cifar100(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-100 ``train`` or ``test`` pickle → ``(images, coarse, fine)``.

    ``images`` is ``(N, 32, 32, 3)`` uint8 RGB (the file stores ``(N, 3072)`` rows of R, G, B
    32x32 planes); ``coarse`` (superclass, 0..19) and ``fine`` (0..99) are ``(N,)`` int64.
    """
    what = "CIFAR-100 python pickle"
    d = _load_pickle(path, what, _CIFAR100_FIX)
    missing = [k for k in ("data", "coarse_labels", "fine_labels") if _key(d, k) is None]
    if missing:
        raise DatasetFormatError(f"{path}: not a {what}: keys {missing} missing; {_CIFAR100_FIX}")
    try:
        data = np.asarray(_key(d, "data"), dtype=np.uint8)
        coarse = np.asarray(_key(d, "coarse_labels"), dtype=np.int64)
        fine = np.asarray(_key(d, "fine_labels"), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: unreadable data or labels ({exc}); "
                                 f"{_CIFAR100_FIX}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: data has shape {data.shape}, expected (N, 3072) "
                                 f"uint8 rows; {_CIFAR100_FIX}")
    n = len(data)
    for name, lab, hi in (("coarse_labels", coarse, 20), ("fine_labels", fine, 100)):
        if lab.ndim != 1 or len(lab) != n:
            raise DatasetFormatError(f"{path}: {n} images but {lab.size} {name}; "
                                     f"{_CIFAR100_FIX}")
        if n and (int(lab.min()) < 0 or int(lab.max()) >= hi):
            raise DatasetFormatError(f"{path}: {name} out of range 0..{hi - 1} "
                                     f"({int(lab.min())}..{int(lab.max())}); {_CIFAR100_FIX}")
    imgs = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(imgs), coarse, fine


def read_cifar100_meta(path: Path) -> tuple[list[str], list[str]]:
    """``(coarse_label_names, fine_label_names)`` from CIFAR-100's ``meta`` pickle."""
    what = "CIFAR-100 meta pickle"
    d = _load_pickle(path, what, _CIFAR100_FIX)
    out = []
    for key in ("coarse_label_names", "fine_label_names"):
        names = _key(d, key)
        if not isinstance(names, list | tuple):
            raise DatasetFormatError(f"{path}: no {key} list; {_CIFAR100_FIX}")
        out.append([n.decode() if isinstance(n, bytes) else str(n) for n in names])
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


JPEG_EXTS: tuple[str, ...] = (".jpg", ".jpeg")
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_PAD = b"\x00\r\n\t "  # some writers pad after the end-of-image marker
_TRUNCATED = ("is a truncated JPEG: no end-of-image marker FFD9 (libjpeg only prints "
              "'Premature end of JPEG file' and fills the missing part grey)")


def _pil_decodes_strictly(data: bytes) -> bool:
    """Whether Pillow decodes ``data`` completely with truncated images refused."""
    import io
    import warnings

    from PIL import Image, ImageFile

    if getattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False):  # someone relaxed it globally
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception:  # OSError "image file is truncated", a decoder warning as error ...
            return False
    return True


def jpeg_problem(data: bytes) -> str | None:
    """Why the bytes of a ``.jpg`` are not a complete JPEG, or ``None``.

    A complete JPEG starts with the start-of-image marker FFD8 and ends with the end-of-image
    marker FFD9 (padding bytes after it allowed). A file without FFD9 at its end is checked with
    Pillow's strict decoder, which accepts files with extra data after the image (camera
    trailers) and refuses a truncated one.
    """
    if data[:2] != _SOI:
        return "is not a JPEG (no start-of-image marker FFD8)"
    if data[-256:].rstrip(_PAD).endswith(_EOI) or _pil_decodes_strictly(data):
        return None
    return _TRUNCATED


def jpeg_file_problem(path: Path) -> str | None:
    """:func:`jpeg_problem` of a file, reading only its first and last bytes when it is fine."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if head == _SOI and tail.rstrip(_PAD).endswith(_EOI):
        return None
    return jpeg_problem(Path(path).read_bytes())


def read_image(path: Path, size: tuple[int, int] | None = None, channels: int = 3) -> np.ndarray:
    """Read one image as ``(H, W, channels)`` uint8 (RGB), resized to ``size=(H, W)`` if given.

    Resizing uses area interpolation when shrinking and bilinear when enlarging. Strict: a
    truncated JPEG (which libjpeg decodes with only a printed warning) is a
    :class:`DatasetFormatError` naming the file, as is any file OpenCV cannot decode.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"image {path} does not exist") from exc
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc})") from exc
    if path.suffix.lower() in JPEG_EXTS or data[:2] == _SOI:
        why = jpeg_problem(data)
        if why is not None:
            raise DatasetFormatError(f"{path} {why}; replace it with an intact copy from the "
                                     "original archive")
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
    if img is None:
        raise DatasetFormatError(f"{path}: cannot decode image; the file is corrupt, replace it")
    return convert_frame(img, size, channels, bgr=True)


def convert_frame(
    img: np.ndarray, size: tuple[int, int] | None, channels: int, bgr: bool = True
) -> np.ndarray:
    """Resize ``img`` (H, W[, 3]) to ``size=(H, W)`` and convert to ``channels`` (1 or 3, RGB)."""
    if size is not None and (img.shape[0], img.shape[1]) != tuple(size):
        shrink = size[0] * size[1] < img.shape[0] * img.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        img = cv2.resize(img, (int(size[1]), int(size[0])), interpolation=interp)
    if img.ndim == 2:
        img = img[:, :, None]
    if channels == 1 and img.shape[2] == 3:
        code = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY
        img = cv2.cvtColor(img, code)[:, :, None]
    elif channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif channels == 3 and bgr:
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img, dtype=np.uint8)


def read_image_files(
    paths: Sequence[Path], size: tuple[int, int] | None = None, channels: int = 3
) -> np.ndarray:
    """Read many images of equal size into ``(N, H, W, C)`` uint8."""
    if not paths:
        raise DatasetFormatError("no image files to read")
    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        img = read_image(p, size, channels)
        if out is None:
            out = np.empty((len(paths), *img.shape), dtype=np.uint8)
        if img.shape != out.shape[1:]:
            raise DatasetFormatError(
                f"{p}: image is {img.shape[:2]} but earlier ones are {out.shape[1:3]}; "
                "pass an explicit size parameter to resize them all"
            )
        out[i] = img
    assert out is not None
    return out


# --------------------------------------------------------------------------------------------
# video: AVI via OpenCV, frame folders
# --------------------------------------------------------------------------------------------


def avi_frame_count(path: Path) -> int:
    """Frame count from the AVI header (fast; exact for the Avenue/ShanghaiTech releases)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetFormatError(f"{path}: OpenCV cannot open this video; it is corrupt")
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def iter_avi(
    path: Path, size: tuple[int, int] | None = None, channels: int = 3
) -> Iterator[np.ndarray]:
    """Decode an AVI frame by frame, each ``(H, W, C)`` uint8 RGB/grey.

    Strict: fewer decodable frames than the header announces (a truncated or damaged file,
    which FFmpeg only logs) raises :class:`DatasetFormatError` naming the file, after the
    frames decoded so far were yielded.
    """
    if not Path(path).exists():
        raise DatasetNotFoundError(f"video {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DatasetFormatError(f"{path}: OpenCV cannot open this video; it is corrupt")
    n = 0
    try:
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield convert_frame(frame, size, channels, bgr=True)
    finally:
        cap.release()
    if n < expected:
        raise DatasetFormatError(
            f"{path}: the AVI header announces {expected} frames but only {n} could be "
            "decoded; the video is truncated or damaged, replace it with an intact copy"
        )


def read_avi(path: Path, size: tuple[int, int] | None = None, channels: int = 3) -> np.ndarray:
    """Decode a whole AVI into ``(T, H, W, C)`` uint8."""
    frames = list(iter_avi(path, size, channels))
    if not frames:
        raise DatasetFormatError(f"{path}: no frames could be decoded; the video is corrupt")
    return np.stack(frames)


# --------------------------------------------------------------------------------------------
# GTSRB CSVs
# --------------------------------------------------------------------------------------------


def read_gtsrb_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a GTSRB annotation CSV (``Filename;Width;Height;Roi.X1;...;ClassId``).

    The official files use ``;``; the Kaggle re-release uses ``,``: both are accepted.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"GTSRB annotation file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text else ""
    delim = ";" if ";" in first else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delim))
    need = {"Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"}
    if not rows or not need <= set(rows[0]) or not ({"Filename", "Path"} & set(rows[0])):
        raise DatasetFormatError(
            f"{path}: not a GTSRB annotation CSV (need columns Filename;Roi.X1;...;ClassId); "
            "use the CSVs from the official archives"
        )
    return rows


# --------------------------------------------------------------------------------------------
# frame-label formats (UCSD .m, ped2.mat, Avenue masks, concatenated npy)
# --------------------------------------------------------------------------------------------

_M_RANGE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")


def parse_ucsd_m(path: Path) -> list[list[tuple[int, int]]]:
    """Anomalous frame ranges per test video from ``UCSDped1.m``/``UCSDped2.m``.

    Each line ``TestVideoFile{end+1}.gt_frame = [61:180];`` gives 1-indexed inclusive ranges
    (several ranges may be joined with ``,`` e.g. ``[5:90, 140:200]``).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"UCSD ground-truth file {path} does not exist")
    out: list[list[tuple[int, int]]] = []
    for m in _M_RANGE.finditer(path.read_text(errors="replace")):
        ranges: list[tuple[int, int]] = []
        for part in re.split(r"[,\s]+", m.group(1).strip()):
            if not part:
                continue
            mm = re.fullmatch(r"(\d+):(\d+)", part)
            if mm is None:
                raise DatasetFormatError(f"{path}: cannot parse range {part!r}; expected a:b")
            ranges.append((int(mm.group(1)), int(mm.group(2))))
        out.append(ranges)
    if not out:
        raise DatasetFormatError(
            f"{path}: no 'TestVideoFile{{end+1}}.gt_frame = [a:b];' lines; use the official "
            "UCSDped2.m from UCSD_Anomaly_Dataset.tar.gz"
        )
    return out


def read_ped2_mat(path: Path) -> list[list[tuple[int, int]]]:
    """Anomalous ranges per video from ``ped2.mat`` (variable ``gt``: 1 x V cells of 2 x K)."""
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path))
        gt = m["gt"]
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"{path} does not exist") from exc
    except Exception as exc:
        raise DatasetFormatError(
            f"{path}: not a ped2.mat ground-truth file with variable 'gt' ({exc})"
        ) from exc
    out: list[list[tuple[int, int]]] = []
    for cell in np.asarray(gt, dtype=object).ravel():
        a = np.asarray(cell).astype(np.int64).reshape(2, -1)  # rows: start, end (1-indexed)
        out.append([(int(a[0, k]), int(a[1, k])) for k in range(a.shape[1])])
    return out


def ranges_to_labels(ranges: Sequence[tuple[int, int]], n_frames: int) -> np.ndarray:
    """1-indexed inclusive ranges → ``(n_frames,)`` uint8 labels (1 = anomalous)."""
    lab = np.zeros(n_frames, dtype=np.uint8)
    for a, b in ranges:
        lab[max(a - 1, 0): min(b, n_frames)] = 1
    return lab


def read_avenue_mask(path: Path) -> np.ndarray:
    """Frame labels from an Avenue ``N_label.mat`` (``volLabel``: 1 x T cells of H x W masks).

    A frame is anomalous when any pixel of its mask is set. Returns ``(T,)`` uint8.
    """
    import scipy.io

    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"Avenue mask file {path} does not exist")
    try:
        vol = scipy.io.loadmat(str(path))["volLabel"]
    except Exception as exc:
        raise DatasetFormatError(
            f"{path}: not an Avenue mask file with variable 'volLabel' ({exc}); "
            "take testing_label_mask/ from the official ground_truth_demo.zip"
        ) from exc
    cells = np.asarray(vol, dtype=object).ravel()
    return np.array([1 if np.any(np.asarray(c)) else 0 for c in cells], dtype=np.uint8)


def read_concatenated_labels(path: Path) -> np.ndarray:
    """A concatenated 0/1 frame-label ``.npy`` (shape ``(N,)`` or ``(1, N)``) as ``(N,)`` uint8."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"label file {path} does not exist")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DatasetFormatError(f"{path}: not a numpy .npy array ({exc})") from exc
    a = np.asarray(a).reshape(-1)
    if a.size and not np.isin(a, (0, 1)).all():
        raise DatasetFormatError(f"{path}: labels must be 0/1, found values {np.unique(a)[:5]}")
    return a.astype(np.uint8)


def split_concatenated(
    labels: np.ndarray, lengths: Sequence[tuple[str, int]], source: Path | str
) -> dict[str, np.ndarray]:
    """Cut a concatenated label array into per-video arrays given ``(video_id, length)`` pairs."""
    total = sum(n for _, n in lengths)
    if total != len(labels):
        raise DatasetFormatError(
            f"{source}: {len(labels)} labels but the test videos have {total} frames in all; "
            "the label file does not belong to this copy of the dataset"
        )
    out: dict[str, np.ndarray] = {}
    start = 0
    for vid, n in lengths:
        out[vid] = labels[start: start + n].copy()
        start += n
    return out


#: The environment variable naming the data root, and the older name still accepted.
DATA_ROOT_ENV = "OCCBENCH_DATA_ROOT"
DATA_ROOT_ENV_ALIAS = "OCCBENCH_DATA"


def env_data_root() -> Path | None:
    """``$OCCBENCH_DATA_ROOT``, else ``$OCCBENCH_DATA`` (the name the tests used first)."""
    return env_path(DATA_ROOT_ENV) or env_path(DATA_ROOT_ENV_ALIAS)


def env_path(name: str) -> Path | None:
    """``Path`` from environment variable ``name`` if set and non-empty."""
    v = os.environ.get(name)
    return Path(v).expanduser() if v else None
