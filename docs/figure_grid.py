"""Make docs/images/grid_pointing.png: the grid pointing game on four 2×2 mosaics of the ImageNet sample images.

Run from the repository root:
    python docs/figure_grid.py --data DATA [--methods rsp,ae,gradcam] [--mosaics OUT/mosaics.json]

DATA is the folder holding ``imagenet/`` (the evaluation's ImageNet sample) and
``weights/efficientnet-lite0-57934424.pth``.

Row r shows mosaic r with the class of its cell r explained (outlined in green), one column per
method, each titled with its grid score (share of the positive relevance inside that cell). The
mosaics are the first four of an evaluation's ``mosaics.json`` when one is given, else drawn as
``relprop evaluate --metrics grid_pointing`` draws them (seed 0) from the first ``--candidates``
images. Methods are evaluation specs (``rsp``, ``ae:ratio=1``, ``rsp:hostile=3``, ...), reduced over
channels as the evaluation reduces them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from relprop.commands.demo import imagenet_categories
from relprop.evaluation import grid
from relprop.evaluation.datasets import open_dataset
from relprop.evaluation.methods import explain, parse_methods
from relprop.evaluation.protocol import Protocol
from relprop.evaluation.runner import select_mosaics
from relprop.evaluation.maps import to_input
from relprop.viz import add_signed_scale, overlay
from relprop.zoo import load_model

ROWS = 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with imagenet/ and weights/")
    parser.add_argument("--methods", default="rsp,ae,gradcam")
    parser.add_argument("--mosaics", type=Path, help="mosaics.json of an evaluation run")
    parser.add_argument("--candidates", type=int, default=100, help="images classified to draw the mosaics")
    parser.add_argument("--cell", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("docs/images/grid_pointing.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, pre = load_model("efficientnet_lite0", args.data / "weights" / "efficientnet-lite0-57934424.pth")
    dataset = open_dataset("imagenet", str(args.data / "imagenet"))
    protocol = Protocol(metrics=("grid_pointing",), mean=pre.mean, std=pre.std, grid_cell=args.cell,
                        grid_mosaics=ROWS, grid_candidates=args.candidates)
    if args.mosaics:
        mosaics = json.loads(args.mosaics.read_text())["mosaics"][:ROWS]
    else:
        mosaics = select_mosaics(dataset, model, protocol, torch.device("cpu"))["mosaics"]
    specs = parse_methods(args.methods)
    names = imagenet_categories()
    fig, axes = plt.subplots(ROWS, 1 + len(specs), figsize=(2.4 * (1 + len(specs)) + 1, 2.4 * ROWS + 0.6), squeeze=False,
                             layout="constrained")
    for row, mosaic in enumerate(mosaics):
        cells = torch.stack([to_input(dataset[i].image, (args.cell, args.cell), pre.mean, pre.std) for i in mosaic["images"]])
        x = grid.assemble(cells)[None]
        picture = (x[0] * torch.tensor(pre.std).view(3, 1, 1) + torch.tensor(pre.mean).view(3, 1, 1)).clamp(0, 1)
        picture = picture.permute(1, 2, 0).numpy()
        cell, label = row % grid.CELLS, mosaic["labels"][row % grid.CELLS]
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title(names[label].split(",")[0], fontsize=8)
        for col, spec in enumerate(specs, start=1):
            method = spec.build(model)
            saliency = explain(spec, method, x, torch.tensor([label]), protocol.reduce_for(spec))[0]
            axes[row, col].imshow(overlay(saliency.numpy(), picture))
            axes[row, col].set_title(f"{spec.label}: {grid.cell_share(saliency, cell):.2f}", fontsize=8)
        for ax in axes[row]:
            top, left = divmod(cell, 2)
            ax.add_patch(plt.Rectangle((left * args.cell - 0.5, top * args.cell - 0.5), args.cell, args.cell,
                                       fill=False, color="lime", lw=1.5))
            ax.set_axis_off()
    add_signed_scale(fig, axes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
