"""Reading an ImageFolder copy of CIFAR-10: vae-search's reader (PIL parses each file once:
its declared size is checked, then the same parse decodes it) against what it did until
torchvision 0.29 deprecated torchvision.io's decoders (a PIL header check, then
torchvision.io.decode_image on the same bytes), alternating in one run.

    python benchmarks/decode.py --data-dir ../shared/data/cifar10-jpeg.tar.gz   # the 60,000 JPEGs
    python benchmarks/decode.py --quick                                          # tiny generated data

Prints each round's seconds and, as its last line, one JSON object: the median seconds of
each, their ratio, and whether every image's pixels are the same from both.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vae_search import data  # noqa: E402


def read_with_torchvision_io(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The reader as it was before PIL decoded the images (vae_search/data.py at a14d708)."""
    from torchvision import datasets
    from torchvision.io import ImageReadMode, decode_image

    out = []
    for split in ("train", "test"):
        folder = datasets.ImageFolder(str(root / split))
        images = torch.empty((len(folder.samples), 3, 32, 32), dtype=torch.uint8)
        for i, (file, _) in enumerate(folder.samples):
            raw = Path(file).read_bytes()
            with Image.open(io.BytesIO(raw)) as im:  # the header check it had
                assert im.size == (32, 32), file
            images[i] = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
        out.append(images)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="an ImageFolder copy of CIFAR-10, or a .tar.gz of one")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each reader, alternated (default 2)")
    ap.add_argument("--quick", action="store_true", help="tiny generated data: checks the code, measures nothing")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="decode-") as tmp:  # the unpacked copy goes with it
        compare(args, ap, Path(tmp))


def compare(args: argparse.Namespace, ap: argparse.ArgumentParser, tmp: Path) -> None:
    if args.quick:
        from tests.samples import make_image_folder

        source = make_image_folder(tmp / "imgs", n_train=20, n_test=10, fmt="jpg")
    elif args.data_dir:
        source = Path(args.data_dir)
    else:
        ap.error("give --data-dir (an ImageFolder copy or its .tar.gz) or --quick")
    kind, path = data.data_layout(source)
    if kind == "archive":  # the shared copy: unpacked into this run's folder, as vae-search unpacks it into its cache
        kind, path = data.data_layout(data.unpacked(path, tmp))
    if kind != "imagefolder":
        ap.error(f"{source} is a {kind} copy; this compares image decoders, so give an ImageFolder")
    print(f"{path}: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    seconds: dict[str, list[float]] = {"pil": [], "torchvision_io": []}
    results = {}
    for _ in range(args.rounds):
        for name, read in (("torchvision_io", read_with_torchvision_io), ("pil", data.read_image_folder)):
            start = time.perf_counter()
            results[name] = read(path)
            seconds[name].append(time.perf_counter() - start)
            images = sum(len(t) for t in results[name])
            print(f"{name}: {seconds[name][-1]:.2f} s for {images:,} images", flush=True)
    same = all(torch.equal(a, b) for a, b in zip(results["pil"], results["torchvision_io"], strict=True))
    pil, tv = statistics.median(seconds["pil"]), statistics.median(seconds["torchvision_io"])
    print(json.dumps({"images": images, "pil_s": round(pil, 2), "torchvision_io_s": round(tv, 2),
                      "pil_vs_torchvision_io": round(pil / tv, 3), "same_pixels": same, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
