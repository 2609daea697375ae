import os
import pickle
import time

import pytest
import torch

from tests.samples import make_batches, make_image_folder
from vae_search import data as data_module
from vae_search.data import load_cifar10
from vae_search.errors import UsageError


class TestLayouts:
    def test_batches_folder(self, batches_dir):
        d = load_cifar10(batches_dir)
        assert d.train.shape == (250, 3, 32, 32) and d.test.shape == (60, 3, 32, 32)
        assert d.train.dtype == torch.uint8
        # the pixels are the pickled rows, reshaped CHW: check one value against the file
        with open(batches_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
            row = pickle.load(f, encoding="latin1")["data"][0]
        assert d.train[0].flatten().tolist() == list(row)

    def test_batches_folder_itself(self, batches_dir):
        d = load_cifar10(batches_dir / "cifar-10-batches-py")
        assert d.train.shape == (250, 3, 32, 32)

    def test_image_folder(self, image_folder):
        d = load_cifar10(image_folder)
        assert d.train.shape == (40, 3, 32, 32) and d.test.shape == (20, 3, 32, 32)
        assert d.train.dtype == torch.uint8 and d.train.float().std() > 1

    def test_jpeg_image_folder(self, tmp_path):
        d = load_cifar10(make_image_folder(tmp_path, n_train=10, n_test=10, fmt="jpg"))
        assert d.train.shape == (10, 3, 32, 32)


@pytest.mark.parametrize("fmt, mode", [("png", "RGB"), ("png", "L"), ("png", "RGBA"), ("png", "P"), ("png", "LA"),
                                       ("jpg", "RGB"), ("jpg", "L")])
def test_pil_decodes_the_pixels_torchvision_io_did(tmp_path, fmt, mode):
    """Images are decoded with PIL (torchvision 0.29 deprecates torchvision.io's decoders);
    every mode an ImageFolder may hold comes out as torchvision.io's RGB mode gave it, so a
    data cache and a study's data fingerprint stay what they were."""
    import numpy as np
    import torchvision.io
    from PIL import Image

    from tests.samples import images

    if not hasattr(torchvision.io, "decode_image"):
        pytest.skip("this torchvision no longer decodes images: nothing to compare with")
    decode_image, rgb = torchvision.io.decode_image, torchvision.io.ImageReadMode.RGB

    for i, pixels in enumerate(images(6, seed=7)):
        im = Image.fromarray(pixels)
        im = im.convert(mode) if mode != "P" else im.quantize(64)
        if mode in ("RGBA", "LA"):  # a varying alpha, which RGB leaves out
            im.putalpha(Image.fromarray(np.uint8(np.arange(1024).reshape(32, 32) % 256)))
        raw = tmp_path / f"{i}.{fmt}"
        im.save(raw)
        want = decode_image(str(raw), mode=rgb)
        assert torch.equal(data_module._decode(str(raw), raw.read_bytes()), want), (fmt, mode, i)


def test_an_image_folder_of_bmp_files_is_read(tmp_path):
    """ImageFolder lists .bmp, .ppm and .tif files too, which torchvision.io never decoded; PIL does."""
    png = load_cifar10(make_image_folder(tmp_path / "png", n_train=6, n_test=4), cache_dir=tmp_path / "c1")
    bmp = load_cifar10(make_image_folder(tmp_path / "bmp", n_train=6, n_test=4, fmt="bmp"), cache_dir=tmp_path / "c2")
    assert torch.equal(png.train, bmp.train) and torch.equal(png.test, bmp.test)


class TestCache:
    def test_second_load_reads_cache_not_images(self, tmp_path, monkeypatch):
        root = make_image_folder(tmp_path / "imgs", n_train=20, n_test=10)
        first = load_cifar10(root, cache_dir=tmp_path / "cache")
        assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1

        def no_decoding(path):
            raise AssertionError("decoded again despite the cache")

        monkeypatch.setattr(data_module, "read_image_folder", no_decoding)
        second = load_cifar10(root, cache_dir=tmp_path / "cache")
        assert torch.equal(first.train, second.train) and first.fingerprint == second.fingerprint

    def test_changed_data_is_decoded_again(self, tmp_path):
        root = make_image_folder(tmp_path / "imgs", n_train=20, n_test=10)
        first = load_cifar10(root, cache_dir=tmp_path / "cache")
        victim = next((root / "train").rglob("*.png"))
        from PIL import Image

        Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
        os.utime(victim, (time.time() + 5, time.time() + 5))
        second = load_cifar10(root, cache_dir=tmp_path / "cache")
        assert second.fingerprint != first.fingerprint

    def test_a_changed_source_keeps_one_copy_in_the_cache(self, tmp_path, monkeypatch):
        """Each version of a folder or archive used to add its decoded copy (180 MB for
        CIFAR-10) and its unpacked files (240 MB for the JPEG copy) to the cache for good."""
        import tarfile

        cache = tmp_path / "cache"
        folder = make_image_folder(tmp_path / "imgs", n_train=20, n_test=10, fmt="jpg")
        other = make_image_folder(tmp_path / "other", n_train=10, n_test=10)
        archive = tmp_path / "cifar10-jpeg.tar.gz"
        seen = set()
        for version in range(3):
            victim = sorted((folder / "train").rglob("*.jpg"))[0]
            victim.write_bytes(sorted((folder / "train").rglob("*.jpg"))[version + 1].read_bytes())
            os.utime(victim, (time.time() + version, time.time() + version))
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(folder / "train", arcname="train")
                tar.add(folder / "test", arcname="test")
            os.utime(archive, (time.time() + version, time.time() + version))
            for source in (folder, archive, other):
                seen.add(load_cifar10(source, cache_dir=cache).fingerprint)
        assert len(seen) == 4  # three versions of the folder (and the archive of each), and the other folder
        assert len(list(cache.glob("cifar10-*.pt"))) == 3  # one per source: folder, archive, other
        assert len(list((cache / "unpacked").iterdir())) == 1
        # and the newest copy is the one kept: read again without decoding
        monkeypatch.setattr(data_module, "read_image_folder", lambda path: pytest.fail(f"{path} decoded again"))
        assert load_cifar10(archive, cache_dir=cache).fingerprint == load_cifar10(folder, cache_dir=cache).fingerprint

    def test_corrupt_cache_is_rebuilt(self, tmp_path):
        root = make_image_folder(tmp_path / "imgs", n_train=20, n_test=10)
        first = load_cifar10(root, cache_dir=tmp_path / "cache")
        cache_file = next((tmp_path / "cache").glob("cifar10-*.pt"))
        cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncated, as by a crash
        assert load_cifar10(root, cache_dir=tmp_path / "cache").fingerprint == first.fingerprint


class TestLimit:
    def test_fixed_deterministic_subset(self, batches_dir):
        d = load_cifar10(batches_dir)
        a, b = d.limit(100, 30), d.limit(100, 30)
        assert a.train.shape == (100, 3, 32, 32) and a.test.shape == (30, 3, 32, 32)
        assert torch.equal(a.train, b.train) and a.fingerprint == b.fingerprint
        assert a.fingerprint != d.fingerprint
        # a mix of the whole set, not its first 100 images
        assert not torch.equal(a.train, d.train[:100])

    def test_limit_above_size_keeps_all(self, batches_dir):
        d = load_cifar10(batches_dir)
        assert d.limit(10_000, None).fingerprint == d.fingerprint


class TestErrors:
    def test_missing_folder(self, tmp_path):
        with pytest.raises(UsageError, match="does not exist.*accepted layouts"):
            load_cifar10(tmp_path / "nope")

    def test_empty_folder(self, tmp_path):
        (tmp_path / "empty").mkdir()
        with pytest.raises(UsageError, match="is empty.*accepted layouts"):
            load_cifar10(tmp_path / "empty")

    def test_unknown_layout(self, tmp_path):
        (tmp_path / "odd").mkdir()
        (tmp_path / "odd" / "notes.txt").write_text("hello")
        with pytest.raises(UsageError, match="no layout.*accepted layouts"):
            load_cifar10(tmp_path / "odd")

    def test_unreadable_image(self, tmp_path):
        root = make_image_folder(tmp_path / "imgs", n_train=10, n_test=10)
        bad = next((root / "test").rglob("*.png"))
        bad.write_bytes(b"not an image at all")
        with pytest.raises(UsageError, match=f"unreadable image {bad}"):
            load_cifar10(root)

    @pytest.mark.parametrize("size, words", [((3000, 2000), r"is \(2000, 3000\) pixels"),
                                             ((10000, 10000), "declares more pixels than any image should have")])
    def test_an_image_is_measured_before_it_is_decoded(self, tmp_path, monkeypatch, size, words):
        """A 12 KB PNG can declare 10,000 x 10,000 pixels (300 MB decoded; 50,000 square would
        be 7.5 GB): the header is read first, and such a file is never decoded."""
        from PIL import Image, ImageFile

        root = make_image_folder(tmp_path / "imgs", n_train=4, n_test=4)
        big = sorted((root / "train").rglob("*.png"))[-1]
        Image.new("1", size).save(big)
        load = ImageFile.ImageFile.load  # where PIL decodes pixels (the 32x32 images go through it)
        monkeypatch.setattr(ImageFile.ImageFile, "load",
                            lambda im: pytest.fail(f"{big} decoded") if im.size == size else load(im))
        with pytest.raises(UsageError, match=words):
            load_cifar10(root, cache_dir=tmp_path / "cache")

    def test_a_truncated_jpeg_is_one_line_with_the_reason(self, tmp_path):
        root = make_image_folder(tmp_path / "imgs", n_train=4, n_test=4, fmt="jpg")
        cut = sorted((root / "test").rglob("*.jpg"))[0]
        cut.write_bytes(cut.read_bytes()[:300])
        with pytest.raises(UsageError, match=f"unreadable image {cut} \\([^)]*[Tt]runcated"):
            load_cifar10(root, cache_dir=tmp_path / "cache")

    def test_incomplete_batches(self, tmp_path):
        folder = make_batches(tmp_path, n_train=20, n_test=10)
        (folder / "data_batch_3").unlink()
        with pytest.raises(UsageError, match="lacks some of data_batch"):
            load_cifar10(tmp_path)

    def test_corrupt_batch_file(self, tmp_path):
        folder = make_batches(tmp_path, n_train=20, n_test=10)
        (folder / "test_batch").write_bytes(b"garbage")
        with pytest.raises(UsageError, match="unreadable batch file"):
            load_cifar10(tmp_path)

    def test_no_internet(self, tmp_path, offline):
        with pytest.raises(UsageError, match="could not download CIFAR-10.*--data-dir"):
            load_cifar10(None, cache_dir=tmp_path / "cache")


class TestArchives:
    """--data-dir takes the official cifar-10-python.tar.gz and a .tar.gz of an ImageFolder."""

    def test_official_layout_archive(self, tmp_path):
        import tarfile

        make_batches(tmp_path / "src", n_train=20, n_test=10)
        archive = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        d = load_cifar10(archive, cache_dir=tmp_path / "cache")
        assert d.train.shape == (20, 3, 32, 32) and d.source == str(archive)
        assert d.fingerprint == load_cifar10(tmp_path / "src").fingerprint

    def test_image_folder_archive_is_unpacked_once(self, tmp_path, monkeypatch):
        import tarfile

        root = make_image_folder(tmp_path / "imgs", n_train=20, n_test=10, fmt="jpg")
        archive = tmp_path / "cifar10-jpeg.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:  # as the shared copy: train/ and test/ at the top
            tar.add(root / "train", arcname="train")
            tar.add(root / "test", arcname="test")
        first = load_cifar10(archive, cache_dir=tmp_path / "cache")
        assert first.train.shape == (20, 3, 32, 32)
        monkeypatch.setattr(tarfile, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpacked again")))
        assert load_cifar10(archive, cache_dir=tmp_path / "cache").fingerprint == first.fingerprint

    def test_a_cache_that_cannot_be_written(self, tmp_path, batches_dir):
        """A folder still loads, and says why every run will decode it again; an archive,
        which must be unpacked somewhere, is one line naming the cache (it was "Not a
        directory (/dev/null/x/unpacked)")."""
        import tarfile

        blocked = tmp_path / "a-file"
        blocked.write_text("")
        d = load_cifar10(batches_dir, cache_dir=blocked / "cache")
        assert d.train.shape == (250, 3, 32, 32) and d.uncached == f"{blocked / 'cache'}: Not a directory"
        assert load_cifar10(batches_dir, cache_dir=tmp_path / "cache").uncached is None
        archive = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(batches_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        with pytest.raises(UsageError, match=f"cannot unpack .* into the data cache {blocked}/cache/unpacked .*"
                                             "VAE_SEARCH_CACHE"):
            load_cifar10(archive, cache_dir=blocked / "cache")

    @pytest.mark.parametrize("evil", ["../escape.txt", "/tmp/absolute-escape.txt", "link"])
    def test_unsafe_member_is_refused(self, tmp_path, evil):
        import io
        import tarfile

        archive = tmp_path / "evil.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(evil)
            if evil == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                info = tarfile.TarInfo("link/inside.txt")  # written through the link
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        # refused ("unsafe member"), or made harmless (a leading "/" is stripped: it lands inside
        # the cache, where it is no CIFAR-10 layout)
        with pytest.raises(UsageError, match="unsafe member|no layout"):
            load_cifar10(archive, cache_dir=tmp_path / "cache")
        assert not (tmp_path / "escape.txt").exists() and not os.path.exists("/tmp/absolute-escape.txt")
        if evil != "/tmp/absolute-escape.txt":
            assert not list((tmp_path / "cache" / "unpacked").iterdir())  # nothing half-unpacked is kept

    @pytest.mark.parametrize("bound", ["bytes", "members"])
    def test_an_archive_that_unpacks_to_far_more_than_cifar10_is_refused(self, tmp_path, monkeypatch, bound):
        """A few MB of gzip can expand to terabytes or to millions of files: bounded from the
        members' headers, before anything is written."""
        import io
        import tarfile

        monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", 10_000)
        monkeypatch.setattr(data_module, "MAX_UNPACKED_MEMBERS", 5)
        archive = tmp_path / "bomb.tar.gz"
        size, count = (20_000, 1) if bound == "bytes" else (10, 8)
        with tarfile.open(archive, "w:gz") as tar:
            for i in range(count):
                info = tarfile.TarInfo(f"train/a/{i}.png")
                info.size = size
                tar.addfile(info, io.BytesIO(bytes(size)))
        with pytest.raises(UsageError, match="unsafe member.*unpacks to more than"):
            load_cifar10(archive, cache_dir=tmp_path / "cache")
        assert not list((tmp_path / "cache" / "unpacked").iterdir())  # nothing half-unpacked is kept

    def test_an_interrupted_unpack_leaves_nothing_and_a_killed_ones_leftovers_go(self, tmp_path, monkeypatch):
        """Ctrl-C while the archive unpacks removes the half-unpacked copy; what a run killed
        outright left (a day old) goes at the next unpack, a fresh one (another worker's,
        unpacking now) stays."""
        import tarfile
        import time

        make_batches(tmp_path / "src", n_train=20, n_test=10)
        archive = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        real_extract = tarfile.TarFile.extract

        def interrupted(self, member, path="", **kw):
            real_extract(self, member, path, **kw)
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(tarfile.TarFile, "extract", interrupted)
            m.setattr(tarfile.TarFile, "extractall",
                      lambda self, path=".", **kw: interrupted(self, self.getmembers()[0], path, **kw))
            with pytest.raises(KeyboardInterrupt):
                load_cifar10(archive, cache_dir=tmp_path / "cache")
        unpacked = tmp_path / "cache" / "unpacked"
        assert list(unpacked.iterdir()) == []
        killed, live = unpacked / ".unpacking-killed", unpacked / ".unpacking-live"
        for folder in (killed, live):
            (folder / "cifar-10-batches-py").mkdir(parents=True)
        day_ago = time.time() - data_module.ABANDONED_AFTER_S - 60
        os.utime(killed, (day_ago, day_ago))
        assert load_cifar10(archive, cache_dir=tmp_path / "cache").train.shape == (20, 3, 32, 32)
        assert not killed.exists() and live.exists()

    def test_not_an_archive(self, tmp_path):
        bogus = tmp_path / "data.tar.gz"
        bogus.write_bytes(b"not gzip at all")
        with pytest.raises(UsageError, match="cannot be unpacked"):
            load_cifar10(bogus, cache_dir=tmp_path / "cache")


def test_the_pickles_and_the_cache_are_read_without_torchvision(tmp_path):
    """torchvision's import (its models, torch._dynamo: seconds) is paid where images are
    decoded, not by a `--jobs` parent or a run that reads the pickles or the cache."""
    import subprocess
    import sys

    folder = make_batches(tmp_path, n_train=20, n_test=10).parent
    probe = ("import sys\nfrom pathlib import Path\nfrom vae_search.data import load_cifar10\n"
             f"for _ in range(2): load_cifar10(Path({str(folder)!r}), cache_dir=Path({str(tmp_path / 'cache')!r}))\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
