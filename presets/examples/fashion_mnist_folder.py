"""Write part of Fashion-MNIST as an image folder (DIR/train/<class>/*.png, DIR/test/<class>/*.png),
to try `dataset = "imagefolder:DIR"` without a folder of your own:

    python presets/examples/fashion_mnist_folder.py my-images --train 300 --test 100

Fashion-MNIST is read as rlr reads it (from data/, or Debian's dataset-fashion-mnist, or
downloaded). Images are written as they are (28×28 grayscale PNGs); ImageFolder reads them as RGB.
"""

import argparse
from pathlib import Path

from PIL import Image
from torchvision.datasets import FashionMNIST

from rlr_engine.workload.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train", type=int, default=300, help="training images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", args.data_dir, download=True, val_fraction=0.0)
    for part, split, count in (("train", data.train, args.train), ("test", data.test, args.test)):
        for label, name in enumerate(FashionMNIST.classes):
            folder = args.folder / part / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate((split.labels == label).nonzero().flatten()[:count].tolist()):
                Image.fromarray(split.images[index, 0].numpy()).save(folder / f"{i:05d}.png")
    print(f"{args.folder}: {len(FashionMNIST.classes)} classes, {args.train} + {args.test} images each")


if __name__ == "__main__":
    main()
