"""CIFAR-10 into uint8 tensors, from any of the layouts users have.

Sources, tried in this order for `load_cifar10(data_dir)`:
  - `data_dir` a .tar.gz (.tgz, .tar) of either layout below, such as the official
    `cifar-10-python.tar.gz` or the shared JPEG copy: unpacked once into the cache folder
    (safely: tarfile's "data" filter refuses members that would land outside it, links out
    of it and device files), then read as that layout;
  - `data_dir` holding `cifar-10-batches-py/` (or being that folder): torchvision's pickles;
  - `data_dir` holding `train/<class>/*` and `test/<class>/*`: an ImageFolder copy, such as
    the JPEG copy in ../shared/data;
  - `data_dir` is None: `torchvision.datasets.CIFAR10(download=True)` into the cache folder.

Images are decoded once into (N, 3, 32, 32) uint8 tensors and cached on disk, keyed by the
source files' names, sizes and times, so a second run starts in seconds; the cache keeps one
copy per source (folder or archive), so a changed source replaces its older copy. Every problem a
user can cause (no internet, a missing or empty folder, an unknown layout, an unreadable
image) raises `UsageError` with one line naming the path and the layouts accepted.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vae_search.atomic import atomic_write
from vae_search.errors import UsageError

BATCHES_DIR = "cifar-10-batches-py"
LAYOUTS = (
    f"accepted layouts: a '{BATCHES_DIR}' folder (torchvision's CIFAR-10 pickles), "
    "an ImageFolder with train/<class>/*.jpg|png and test/<class>/*.jpg|png, or a .tar.gz of either"
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# What an archive may unpack to. CIFAR-10 is 60,000 images: 178 MB as the official pickles,
# about 20 MB of JPEGs in the shared copy. An archive is untrusted, and a few MB of gzip can
# expand to terabytes or to millions of empty files, so unpacking stops well above CIFAR-10.
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_UNPACKED_MEMBERS = 250_000


@dataclass
class Cifar10:
    train: torch.Tensor  # (N, 3, 32, 32) uint8
    test: torch.Tensor  # (M, 3, 32, 32) uint8, the validation split
    source: str  # where it came from, for the trial's attributes
    uncached: str | None = None  # why the decoded copy could not be kept, where it could not

    @property
    def fingerprint(self) -> str:
        """A short hash of exactly the pixels used: two runs with the same fingerprint saw
        the same data."""
        h = hashlib.sha256()
        for t in (self.train, self.test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def showcase(self, n: int = 8) -> torch.Tensor:
        """n test images spread evenly over the split (ImageFolder sorts by class, so the
        first n would all be airplanes)."""
        return self.test[torch.linspace(0, len(self.test) - 1, n).long()]

    def limit(self, train: int | None, val: int | None) -> Cifar10:
        return Cifar10(fixed_subset(self.train, train), fixed_subset(self.test, val), self.source)


def fixed_subset(images: torch.Tensor, n: int | None) -> torch.Tensor:
    """A fixed subset of n images: the first n of a permutation seeded with 0, independent of
    the trial's seed, so every run with the same limit sees the same images (and ImageFolder's
    class-sorted order does not give n airplanes)."""
    if n is None or n >= len(images):
        return images
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[:n].sort().values]


def default_cache_dir() -> Path:
    env = os.environ.get("VAE_SEARCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vae-search"


def load_cifar10(data_dir: Path | None = None, cache_dir: Path | None = None) -> Cifar10:
    """All of CIFAR-10 as uint8 tensors; see the module docstring for the sources."""
    cache_dir = cache_dir or default_cache_dir()
    if data_dir is None:
        return _download(cache_dir)
    layout, path = data_layout(Path(data_dir).expanduser())
    if layout == "archive":
        kind, inner = data_layout(unpacked(path, cache_dir))  # a folder: batches or an ImageFolder
        data = _cached(inner, cache_dir, _reader(kind), source=path)
        return replace(data, source=str(path))  # named by the archive, not the folder it unpacked to
    return _cached(path, cache_dir, _reader(layout), source=path)


def _reader(layout: str) -> Callable[[Path], tuple[torch.Tensor, torch.Tensor]]:
    return _read_batches if layout == "batches" else read_image_folder


def data_layout(data_dir: Path) -> tuple[str, Path]:
    """("archive" | "batches" | "imagefolder", the path to read) for a --data-dir, from names
    alone (nothing is read or unpacked), or a UsageError naming the accepted layouts."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.exists():
        raise UsageError(f"data folder {data_dir} does not exist; {LAYOUTS}")
    if data_dir.is_file() and data_dir.name.endswith(ARCHIVE_SUFFIXES):
        return "archive", data_dir
    if not data_dir.is_dir():
        raise UsageError(f"data path {data_dir} is not a folder; {LAYOUTS}")
    batches = data_dir if data_dir.name == BATCHES_DIR else data_dir / BATCHES_DIR
    if batches.is_dir():
        return "batches", batches
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return "imagefolder", data_dir
    if not any(data_dir.iterdir()):
        raise UsageError(f"data folder {data_dir} is empty; {LAYOUTS}")
    raise UsageError(f"data folder {data_dir} has no layout vae-search knows; {LAYOUTS}")


def check_data_dir(data_dir: Path) -> None:
    """What a command checks of --data-dir before it writes anything (a study, a folder): a
    known layout, and for an archive that its first header reads (a file that is no archive
    at all). The images themselves are read later, once."""
    kind, path = data_layout(data_dir)
    if kind == "archive":
        try:
            with tarfile.open(path) as tar:
                tar.next()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise _unreadable(path, e) from None


def _download(cache_dir: Path) -> Cifar10:
    """torchvision's download of the official archive (its MD5 checked), read by our own
    restricted reader rather than torchvision's plain pickle.load."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    root = cache_dir / "torchvision"
    cifar = datasets.CIFAR10
    batches = root / BATCHES_DIR
    if not all(check_integrity(str(batches / name), md5) for name, md5 in cifar.train_list + cifar.test_list):
        try:
            download_and_extract_archive(cifar.url, str(root), filename=cifar.filename, md5=cifar.tgz_md5)
        except Exception as e:  # URLError, socket errors, a corrupt partial download...
            raise UsageError(
                f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); without "
                f"internet pass --data-dir (or set VAE_SEARCH_DATA); {LAYOUTS}"
            ) from None
    return _cached(batches, cache_dir, _read_batches, source=batches)


def _unreadable(archive: Path, e: Exception) -> UsageError:
    return UsageError(f"archive {archive} cannot be unpacked ({type(e).__name__}: {e}); {LAYOUTS}")


def _bounded_data_filter() -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    """tarfile's "data" filter (no absolute paths, no "..", no links out, no devices), and a
    bound on what the archive unpacks to, checked from each member's header before it is
    written."""
    seen = {"bytes": 0, "members": 0}

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, dest)
        seen["bytes"] += member.size
        seen["members"] += 1
        if seen["bytes"] > MAX_UNPACKED_BYTES or seen["members"] > MAX_UNPACKED_MEMBERS:
            raise tarfile.FilterError(f"it unpacks to more than {MAX_UNPACKED_BYTES / 1024**3:.0f} GB or "
                                      f"{MAX_UNPACKED_MEMBERS:,} files, far more than CIFAR-10")
        return member

    return check


def unpacked(archive: Path, cache_dir: Path) -> Path:
    """The archive unpacked into the cache (once; a later call finds it), as the folder that
    holds the layout (an archive may wrap it in one top folder)."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    mine = f"{archive.name}-{_path_key(archive)}-"  # every version of this archive, here
    dest = cache_dir / "unpacked" / f"{mine}{key}"
    if not dest.is_dir():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".unpacking-"))
        except OSError as e:
            raise UsageError(f"cannot unpack {archive} into the data cache {dest.parent} ({e.strerror or e}); set "
                             "VAE_SEARCH_CACHE to a folder this user can write") from None
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter=_bounded_data_filter())
        except tarfile.FilterError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UsageError(f"archive {archive} has an unsafe member ({e}); not unpacked") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _unreadable(archive, e) from None
        except BaseException:  # Ctrl-C mid-unpack: the half-unpacked copy goes (a run takes up to a minute)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(dest)  # atomic: a worker unpacking at the same moment loses the race harmlessly
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in dest.parent.glob(f"{glob.escape(mine)}*"):  # the archive changed: its older copies go
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
        _remove_abandoned_unpacks(dest.parent)
    root = dest
    while not (root / BATCHES_DIR).is_dir() and not (root / "train").is_dir():
        subdirs = [d for d in root.iterdir() if d.is_dir()]
        if len(subdirs) != 1 or root.name == BATCHES_DIR:
            break
        root = subdirs[0]
    return root


ABANDONED_AFTER_S = 24 * 3600  # an unpack takes a minute at most: one this old was killed


def _remove_abandoned_unpacks(folder: Path) -> None:
    """Remove what unpacks killed outright (no clean-up runs on SIGKILL or a power cut) left:
    `.unpacking-*` folders untouched for a day, never one another worker is writing now."""
    import time

    for tmp in folder.glob(".unpacking-*"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _source_key(path: Path) -> str:
    """Names, sizes and modification times of every file below `path`: cheap to compute
    (no reading), and it changes when the data does."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            h.update(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:24]


def _path_key(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


def _cached(path: Path, cache_dir: Path, read: Callable[[Path], tuple[torch.Tensor, torch.Tensor]], *,
            source: Path) -> Cifar10:
    """`read(path)` decoded once and kept in the cache, one file per `source` (the folder or
    archive the user gave): when the data changes, the copy of its older version is removed,
    so the cache does not grow by 180 MB with every change."""
    mine = f"cifar10-{_path_key(source)}-"
    cache_file = cache_dir / f"{mine}{_source_key(path)}.pt"
    if cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return Cifar10(blob["train"], blob["test"], str(path))
        except Exception:
            pass  # a cache we cannot read is rebuilt, never trusted
    train, test = read(path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, lambda f: torch.save({"train": train, "test": test}, f))
        for old in cache_dir.glob(f"{glob.escape(mine)}*.pt"):
            if old != cache_file:
                old.unlink(missing_ok=True)
    except OSError as e:  # a read-only cache costs every later run (and worker) the decode again: said, not fatal
        return Cifar10(train, test, str(path), uncached=f"{cache_dir}: {e.strerror or e}")
    return Cifar10(train, test, str(path))


class _BatchUnpickler(pickle.Unpickler):
    """Python's unpickler limited to what CIFAR-10's batch files hold: dicts, lists, str,
    bytes, ints and numpy arrays. A pickle can name any importable callable and have it
    called (os.system, say): a data file from a shared study or an archive is untrusted, so
    every global outside this list is refused, as safe loaders (torch's weights_only) do."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2: encode(str, "latin1")
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays and lists")


BATCH_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}


def _read_batch(path: Path) -> torch.Tensor:
    """One batch file -> (N, 3, 32, 32) uint8. The originals are Python 2 pickles of dicts
    with byte-string keys (str keys once read with latin1, as torchvision reads them)."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            OSError) as e:
        raise UsageError(f"{path} is an unreadable batch file ({e}); {LAYOUTS}") from None
    data = entry.get("data", entry.get(b"data")) if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UsageError(f"{path} is not a CIFAR-10 batch (no 'data' array of N x 3072 bytes); {LAYOUTS}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are CHW, as in the pickles


def _read_batches(batches: Path) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for train in (True, False):
        missing = [name for name in BATCH_FILES[train] if not (batches / name).is_file()]
        if missing:
            raise UsageError(f"{batches} lacks some of data_batch_1..5 and test_batch ({', '.join(missing)}); {LAYOUTS}")
        out.append(torch.cat([_read_batch(batches / name) for name in BATCH_FILES[train]]))
    return out[0], out[1]


def _decode(file: str, raw: bytes) -> torch.Tensor:
    """One image file's bytes -> (3, 32, 32) uint8, decoded with PIL, as torchvision's
    ImageFolder itself reads images (torchvision 0.29 deprecates its own decoders; on all
    60,000 images of the shared JPEG copy PIL's pixels are those torchvision.io gave, byte for
    byte). The size the header declares is checked before any pixel is decoded: a file of a
    few KB can declare a huge image (a PNG of 50,000 x 50,000 pixels decodes to 7.5 GB), and
    a data folder is untrusted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.size != (32, 32):
                    raise UsageError(f"image {file} is {(im.size[1], im.size[0])} pixels, CIFAR-10 is 32x32; {LAYOUTS}")
                # grey, palette and alpha to RGB, as ImageFolder's own loader converts them
                pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UsageError(f"image {file} declares more pixels than any image should have; not decoded; {LAYOUTS}") from None
    except UnidentifiedImageError:
        raise UsageError(f"unreadable image {file} (not an image format PIL reads); {LAYOUTS}") from None
    except UsageError:
        raise
    except Exception as e:  # truncated or corrupt data: PIL's OSError, or a decoder's own
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"unreadable image {file} ({reason}); {LAYOUTS}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def read_image_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    # Imported here, not at the top: torchvision's package import pulls in its models and
    # torch._dynamo (about 2.5 s on the project's CPUs), which reading the pickles or the
    # decoded cache does not need; a `--jobs` parent, which never trains, then never pays it.
    from torchvision import datasets

    out = []
    for split in ("train", "test"):
        try:
            folder = datasets.ImageFolder(str(root / split))
        except (FileNotFoundError, OSError) as e:
            raise UsageError(f"{root / split}: {e}; {LAYOUTS}") from None
        images = torch.empty((len(folder.samples), 3, 32, 32), dtype=torch.uint8)
        for i, (file, _) in enumerate(folder.samples):
            try:
                raw = Path(file).read_bytes()  # read once: the bytes measured are the bytes decoded
            except OSError as e:
                raise UsageError(f"unreadable image {file} ({e.strerror}); {LAYOUTS}") from None
            images[i] = _decode(file, raw)
        out.append(images)
    return out[0], out[1]
