"""Make docs/images/imagenet_rsp_ae.png: EfficientNet-Lite0 on four shared ImageNet val images.

Run from the repository root: python docs/figure_imagenet.py [path/to/shared/data]
Rows: image (ground-truth box in green) | RSP | AE r=2 | AE r=1, each explaining the ground-truth class.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

import relprop
from relprop.commands.demo import imagenet_categories
from relprop.preprocess import load_image
from relprop.viz import show_heatmap, to_map
from relprop.zoo import load_model

IMAGES = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000003.JPEG",
          "ILSVRC2012_val_00000007.JPEG", "ILSVRC2012_val_00000011.JPEG"]


def main(shared: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = shared / "imagenet"
    labels = {r["image"]: int(r["label"]) for r in csv.DictReader(open(root / "val_labels.csv"))}
    boxes: dict[str, list] = {}
    for r in csv.DictReader(open(root / "val_boxes.csv")):
        boxes.setdefault(r["image"], []).append([float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    model, pre = load_model("efficientnet_lite0", shared / "weights" / "efficientnet-lite0-57934424.pth")
    images = [load_image(root / "val" / name) for name in IMAGES]
    x = torch.stack([pre(im) for im in images])
    target = torch.tensor([labels[name] for name in IMAGES])
    predicted = model(x).argmax(1)
    methods = {"RSP": relprop.RSP(model), "AE r=2": relprop.AE(model, ratio=2.0), "AE r=1": relprop.AE(model, ratio=1.0)}
    maps = {k: m.attribute(x, target=target) for k, m in methods.items()}
    names = imagenet_categories()
    fig, axes = plt.subplots(len(IMAGES), 1 + len(methods), figsize=(10, 10))
    for row, (name, image) in enumerate(zip(IMAGES, images)):
        w, h = image.size
        scale = pre.resize / min(w, h)
        off_x = (round(w * scale) - pre.size) // 2
        off_y = (round(h * scale) - pre.size) // 2
        axes[row, 0].imshow(np.asarray(pre.crop(image)))
        for x0, y0, x1, y1 in boxes[name]:
            rect = plt.Rectangle((x0 * scale - off_x, y0 * scale - off_y), (x1 - x0) * scale, (y1 - y0) * scale,
                                 fill=False, color="lime", lw=1.5)
            axes[row, 0].add_patch(rect)
        axes[row, 0].set_title(f"{names[target[row]]} (pred: {names[predicted[row]]})", fontsize=7)
        axes[row, 0].set_axis_off()
        for col, (label, attr) in enumerate(maps.items(), start=1):
            show_heatmap(axes[row, col], to_map(attr[row]))
            if row == 0:
                axes[row, col].set_title(label)
    fig.tight_layout()
    out = Path("docs/images/imagenet_rsp_ae.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data"))
