"""The HTML report's figures a user reads: per-class values and the best/worst examples (structure, not pixels)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from relprop.cli import main
from relprop.evaluation.examples import ranked_units, ranking_key
from relprop.evaluation.report import (
    ExampleFigure, ExamplePanel, example_figure, html_report, per_class_bars, per_class_table, short_class_names,
)


def _results(class_names: list[str], per_method: dict[str, dict[str, float | None]]) -> dict:
    """A minimal results.json with per-class pointing and mIoU values."""
    config = {
        "metrics": ["pointing", "miou"],
        "miou": {"thresholds": ["mean"]},
        "model": "tiny",
        "data": {"name": "imagenet", "classes": len(class_names), "difficult_flags": None, "evaluated": 1},
    }
    results: dict = {
        method: {"pointing": {"all": 50.0, "per_class": values}, "miou": {"all": 40.0, "per_class": values}}
        for method, values in per_method.items()
    }
    results["config"] = config
    return results


def _imagenet_like(count: int) -> list[str]:
    return [f"class {i:04d}, synonym {i}, another synonym" for i in range(count)]


def test_short_class_names_keep_the_first_synonym_and_stay_distinct():
    names = ["tench, Tinca tinca", "crane", "crane, bird", "a" * 40, "Shetland sheepdog, Shetland sheep dog, Shetland"]
    short = short_class_names(names)
    assert short["tench, Tinca tinca"] == "tench"
    assert short["Shetland sheepdog, Shetland sheep dog, Shetland"] == "Shetland sheepdog"
    assert short["crane"] != short["crane, bird"]  # both start with "crane": they keep their full names
    assert short["a" * 40] == "a" * 23 + "…"


def test_a_thousand_classes_get_a_table_of_the_best_and_worst_with_na_for_unscored_classes():
    """Issue 15 §3: per-class charts were dropped for ImageNet; classes without a scored unit must read n/a."""
    names = _imagenet_like(1000)
    rng = np.random.default_rng(0)
    first = {n: float(v) for n, v in zip(names[:400], rng.uniform(0, 100, 400))}
    second = {n: float(v) for n, v in zip(names[200:500], rng.uniform(0, 100, 300))}
    results = _results(names, {"rsp": first, "gradcam": second})
    assert per_class_bars(results, "pointing") is None  # 500 scored classes: too many for bars
    header, rows = per_class_table(results, "pointing")
    assert header == ["Class", "rsp", "gradcam"] and len(rows) == 20
    ranked = sorted(first, key=lambda n: -first[n])
    assert [row[0] for row in rows[:10]] == [short_class_names(names)[n] for n in ranked[:10]]
    assert rows[0][0] == ranked[0].split(",")[0]  # short names: the first synonym
    assert [row[1] for row in rows[-10:]] == ["n/a"] * 10  # rsp scored only the first 400 classes
    for row in rows:  # gradcam scored classes 200-499 only
        assert (row[2] == "n/a") == (not 200 <= int(row[0].split()[1]) < 500), row
    page = html_report(results)
    section = page[page.index("<h2>Per class</h2>") : page.index("<h2>Configuration</h2>")]
    assert "<img" not in section
    assert "500 of 1000 classes have a scored unit (the others are left out)" in section
    assert "The 10 best and 10 worst classes of rsp" in section
    assert section.count("<details>") == 2 and "All 500 scored classes" in section  # pointing and mIoU
    every = re.findall(r"<tr><td>([^<]*)</td>", section.split("<details>")[1].split("</details>")[0])
    assert len(every) == 500


def test_few_classes_get_bars_with_na_marks():
    names = ["aeroplane", "bicycle", "bird"]
    results = _results(names, {"rsp": {"aeroplane": 80.0, "bird": 0.0}, "center": {"aeroplane": 50.0, "bicycle": 25.0,
                                                                                    "bird": None}})
    fig = per_class_bars(results, "miou")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    labels = [t.get_text() for t in ax.texts]  # rsp's three classes, then center's
    assert labels == ["80.0", "n/a", "0.0", "50.0", "25.0", "n/a"]  # rsp has no bicycle, center's bird is undefined
    assert ax.get_xlim() == pytest.approx((0.0, 110.0))
    assert "n/a: no scored unit" in html_report(results)


def _panel(size: tuple[int, int], point: tuple[float, float] | None) -> ExamplePanel:
    width, height = size
    truth = np.zeros((height, width), dtype=bool)
    truth[10:30, 20:60] = True
    image = np.full((height // 2, width // 2, 3), 128, dtype=np.uint8)  # shrunk for display
    saliency = np.random.default_rng(1).normal(size=(height // 2, width // 2))
    return ExamplePanel(image, saliency, size, f"unit {size}", truth, point, 15.0)


def test_example_thumbnails_show_truth_point_tolerance_colour_bar_at_the_images_aspect():
    """Issue 15 §3: examples with the ground truth, the arg-max point and its 15-px circle, a colour bar,
    and the original aspect ratio (they were squeezed to the square input grid)."""
    from matplotlib.patches import Circle

    rows = [[_panel((200, 100), (40.0, 20.0)), _panel((80, 160), (5.0, 150.0))], [_panel((120, 90), None)]]
    fig = example_figure(rows)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(bars) == 1 and len(panels) == 3
    for ax, (width, height) in zip(panels, [(200, 100), (80, 160), (120, 90)]):
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert (x1 - x0) / (y0 - y1) == pytest.approx(width / height)
        assert ax.images[0].get_extent() == [-0.5, width - 0.5, height - 0.5, -0.5]  # original pixel coordinates
        assert ax.collections, "the ground truth is outlined"
    circles = [p for p in panels[0].patches if isinstance(p, Circle)]
    assert len(circles) == 1 and circles[0].center == (40.0, 20.0) and circles[0].radius == 15.0
    assert not [p for p in panels[2].patches if isinstance(p, Circle)]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["red: evidence for the class", "blue: evidence against it", "ground truth", "arg-max point",
                      "15-px tolerance circle"]
    page = html_report(_results(["a"], {"rsp": {"a": 1.0}}), examples={"rsp": ExampleFigure(fig, "Ranked by IoU.")})
    assert "<h3>rsp</h3><p>Ranked by IoU.</p><img" in page


def _record(index: int, methods: dict) -> dict:
    units = [{"label": label} for label in range(len(next(iter(next(iter(methods.values())).values()))))]
    return {"index": index, "status": "ok", "units": units, "methods": methods}


def test_examples_are_ranked_by_one_metric():
    """Units without the ranking metric are left out instead of being ranked by another metric."""
    miou = {"counts": {"mean": [3, 1, 0, 10]}}  # IoU 0.75
    records = [
        _record(0, {"m": {"miou": [miou, None], "pointing": [{"hit": False, "point": [1, 2]}, {"hit": True, "point": [3, 4]}]}}),
        {"index": 1, "status": "error"},
    ]
    assert ranking_key(records, "m") == "miou"
    ranked = ranked_units(records, "m", "miou")
    assert [(u.index, u.label, u.score) for u in ranked] == [(0, 0, 0.75)]
    assert ranked[0].pointing == {"hit": False, "point": [1, 2]}
    assert ranking_key([_record(0, {"m": {"pointing": [{"hit": True, "point": [0, 0]}]}})], "m") == "pointing"


def test_voc_report_examples_outline_the_masks_and_say_how_they_rank(shared_data: Path, tmp_path: Path):
    out = tmp_path / "out"
    code = main(["evaluate", "--dataset", "voc2007", "--root", str(shared_data / "voc2007"), "--methods", "center",
                 "--metrics", "pointing,miou", "--limit", "3", "--examples", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    page = (out / "report.html").read_text()
    assert "<p>Ranked by foreground IoU at the first mIoU threshold" in page
    assert "of 20 classes have a scored unit" in page and "<h3>pointing-game accuracy (%)</h3>" in page
