"""Evaluation metrics on synthetic maps with answers computed by hand (evaluation.md §10)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy.ndimage import gaussian_filter

from relprop.evaluation.datasets import VOC2007, boxes_to_mask
from relprop.evaluation.maps import gaussian_smooth, input_shape, to_grid, to_original
from relprop.evaluation.methods import MethodSpec, parse_methods
from relprop.evaluation.metrics import (
    SegmentationUnit,
    Threshold,
    argmax_point,
    auc,
    average_precision,
    causal_curve,
    center_point,
    confusion,
    energy_proportion,
    foreground,
    hit,
    miou_scores,
    pointing_accuracy,
    PointingUnit,
    prepare,
    randomisation_units,
    randomised_models,
    similarity,
)
from relprop.evaluation.protocol import Protocol
from relprop.evaluation.results import aggregate
from relprop.evaluation.runner import Evaluator

# ------------------------------------------------------------------------------------ pointing game


def test_hit_test_worked_values() -> None:
    region = np.zeros((120, 200), dtype=bool)
    region[50, 100] = True  # Ω = the single pixel (x = 100, y = 50)
    assert hit(region, (114, 50))  # 14² = 196 < 225
    assert not hit(region, (115, 50))  # 225 is not < 225
    assert hit(region, (110, 61))  # 100 + 121 = 221
    assert not hit(region, (109, 62))  # 81 + 144 = 225


def _peaked_map(height: int, width: int, u: int, v: int) -> np.ndarray:
    saliency = np.random.default_rng(0).uniform(0, 0.5, size=(height, width))
    saliency[v, u] = 1.0
    return saliency


@pytest.mark.parametrize(
    "u, expected", [(65, True), (80 + 14, True), (80 + 16, False), (50 - 14, True), (50 - 16, False)]
)
def test_map_peaked_inside_or_beside_a_box(u: int, expected: bool) -> None:
    region = np.zeros((150, 200), dtype=bool)
    region[50:81, 50:81] = True  # columns and rows 50..80
    point = argmax_point(_peaked_map(150, 200, u, 65))
    assert point == (u, 65)
    assert hit(region, point) is expected


def test_argmax_ties_take_the_first_maximum_in_row_major_order() -> None:
    saliency = np.zeros((8, 10))
    saliency[3, 7] = saliency[5, 2] = 2.0
    assert argmax_point(saliency) == (7, 3)
    assert argmax_point(torch.zeros(4, 5)) == (0, 0)


def test_class_balanced_aggregation() -> None:
    units = [PointingUnit(0, i < 9) for i in range(10)] + [PointingUnit(1, False)]
    scores = pointing_accuracy(units, ("A", "B", "C"))
    assert scores["accuracy"] == pytest.approx(45.0)
    assert scores["overall"] == pytest.approx(100 * 9 / 11)
    assert round(scores["overall"], 1) == 81.8
    assert scores["classes"] == 2 and "C" not in scores["per_class"]


def test_voc_box_to_mask_is_one_based_and_inclusive() -> None:
    mask = boxes_to_mask([(1, 1, 2, 3)], 5, 5, one_based=True)
    expected = np.zeros((5, 5), dtype=bool)
    expected[0:3, 0:2] = True
    assert (mask == expected).all() and mask.sum() == 6


def test_center_point_on_a_generated_voc_box() -> None:
    point = center_point(100, 80)
    assert point == (50, 40)
    assert hit(boxes_to_mask([(60, 40, 70, 50)], 80, 100, one_based=True), point)  # nearest pixel (59, 40): 9 px
    assert not hit(boxes_to_mask([(70, 40, 80, 50)], 80, 100, one_based=True), point)  # 19 px


# ---------------------------------------------------------------------------- difficult-only images


def _voc_xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects
    )
    return (
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )


def make_voc(root: Path, images: dict[str, tuple[int, int, list]], flags: dict[str, dict[str, int]] | None) -> Path:
    """A VOC2007 layout with grey JPEGs, XML boxes and (optionally) an EBP flag file."""
    from relprop.evaluation.datasets import VOC_CLASSES

    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (width, height, objects) in images.items():
        Image.new("RGB", (width, height), (90, 120, 150)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(width, height, objects))
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in images))
    if flags is not None:
        rows = ["\t".join([image_id] + [str(row.get(c, 0)) for c in VOC_CLASSES]) for image_id, row in flags.items()]
        (root / "pointing_game_ebp_voc07_difficult.txt").write_text("\n".join(rows) + "\n")
    return root


def _center_results(root: Path) -> dict:
    dataset = VOC2007(root)
    protocol = Protocol(metrics=("pointing",))
    evaluator = Evaluator(dataset, None, parse_methods("center"), protocol, torch.device("cpu"))
    records = evaluator.records([dataset[i] for i in range(len(dataset))])
    config = {"metrics": ["pointing"], "data": dataset.describe()}
    return aggregate(records, ["center"], config, dataset.class_names)["center"]["pointing"]


def test_difficult_only_objects_and_flagged_pairs(tmp_path: Path) -> None:
    # 100 x 80 images, center (50, 40). Hits and misses chosen by hand:
    images = {
        "000001": (100, 80, [("dog", (45, 35, 55, 45), 1), ("dog", (1, 1, 5, 5), 1), ("person", (48, 38, 60, 50), 0)]),
        "000002": (100, 80, [("cat", (50, 40, 60, 50), 0)]),  # hit
        "000003": (100, 80, [("cat", (90, 70, 100, 80), 0)]),  # miss
    }
    flags = {"000001": {"dog": 1, "person": 0}, "000002": {"cat": 1}}  # 000003 is not listed
    result = _center_results(make_voc(tmp_path / "voc", images, flags))
    # dog: every box is PASCAL-difficult -> skipped in both subsets although it would hit.
    assert set(result["per_class"]) == {"person", "cat"}
    assert result["pairs"] == 3
    assert result["all"] == pytest.approx((100.0 + 50.0) / 2)
    # Difficult subset: person is listed with flag 0 -> out; 000002 cat flagged; 000003 not listed -> in.
    assert result["difficult_pairs"] == 2
    assert result["difficult"] == pytest.approx(50.0)


def test_no_flag_file_means_no_difficult_numbers(tmp_path: Path) -> None:
    images = {"000002": (100, 80, [("cat", (50, 40, 60, 50), 0)])}
    result = _center_results(make_voc(tmp_path / "voc", images, None))
    assert result["all"] == 100.0
    assert result["difficult"] is None


# ------------------------------------------------------------------------------ maps and geometry


def test_shorter_side_input_grid() -> None:
    assert input_shape(500, 375, "shorter_side", 224) == (224, 298)  # floor(224 * 500 / 375)
    assert input_shape(375, 500, "shorter_side", 224) == (298, 224)
    assert input_shape(500, 375, "fixed", 224) == (224, 224)


def test_map_back_to_the_image_is_exact_for_a_linear_map() -> None:
    # A map whose value at input pixel j is the original x coordinate of its centre, (j + 0.5)·W/w − 0.5,
    # must read x at every original pixel x away from the borders (bilinear is exact on linear data).
    width, height, w, h = 300, 200, 64, 40
    columns = (torch.arange(w, dtype=torch.float64) + 0.5) * width / w - 0.5
    back = to_original(columns.expand(h, w), height, width)
    inner = slice(10, width - 10)
    assert torch.allclose(back[:, inner], torch.arange(width, dtype=torch.float64)[inner].expand(height, -1), atol=1e-9)


def test_mask_to_grid_samples_pixel_centres() -> None:
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, 4:] = True  # right half
    assert (to_grid(mask, (2, 4)) == np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=bool)).all()


def test_gaussian_smoothing_matches_scipy_with_replicate_padding() -> None:
    saliency = torch.from_numpy(np.random.default_rng(1).normal(size=(100, 100)))
    ours = gaussian_smooth(saliency, 0.02)  # sigma = 2, half-width 8
    reference = gaussian_filter(saliency.numpy(), sigma=2.0, mode="nearest", truncate=4.0)
    assert np.allclose(ours.numpy(), reference, atol=1e-10)
    assert gaussian_smooth(saliency, 0.0) is saliency


# ------------------------------------------------------------------------------------------ energy


def test_energy_pointing_game_worked_values() -> None:
    box = np.zeros((224, 224), dtype=bool)
    box[:112, :112] = True
    assert energy_proportion(np.ones((224, 224)), box) == pytest.approx(0.25)
    assert math.isnan(energy_proportion(np.zeros((224, 224)), box))
    signed = np.where(box, 1.0, -1.0)
    assert energy_proportion(signed, box) == pytest.approx(1.0)  # negatives clipped
    assert energy_proportion(signed, box, negative="abs") == pytest.approx(0.25)


# -------------------------------------------------------------------------------------------- mIoU

A = np.array([[0.0, 1.0], [2.0, 3.0]])
G = np.array([[0, 1], [1, 1]], dtype=bool)


@pytest.mark.parametrize("transform", [lambda a: a, lambda a: 2 * a + 5, lambda a: (a - a.min()) / (a.max() - a.min())])
def test_miou_worked_example(transform) -> None:  # type: ignore[no-untyped-def]
    raw = transform(A)
    predicted = foreground(raw, prepare(raw), Threshold("mean"), G)
    assert (predicted == np.array([[0, 0], [1, 1]], dtype=bool)).all()
    counts = confusion(predicted, G)
    assert counts == (2, 0, 1, 1)
    scores = miou_scores([SegmentationUnit(0, counts)], ("c",))
    assert scores["iou_fg"] == pytest.approx(100 * 2 / 3)
    assert scores["iou_bg"] == pytest.approx(50.0)
    assert scores["miou"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(75.0)


def test_miou_accumulates_over_units_before_dividing() -> None:
    units = [SegmentationUnit(0, (2, 0, 1, 1)), SegmentationUnit(1, (0, 2, 2, 0))]
    scores = miou_scores(units, ("a", "b"))
    assert scores["iou_fg"] == pytest.approx(100 * 2 / 7)  # ΣTP / Σ(TP+FP+FN) = 2 / (3 + 4)
    assert scores["iou_bg"] == pytest.approx(100 * 1 / 6)  # ΣTN / Σ(TN+FN+FP) = 1 / (2 + 4)
    assert scores["per_unit_fg"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert scores["per_class_fg"] == pytest.approx(100 * (2 / 3 + 0) / 2)


def test_ignored_pixels_are_not_counted() -> None:
    predicted = np.array([[1, 1], [0, 0]], dtype=bool)
    gt = np.array([[1, 0], [1, 0]], dtype=bool)
    ignore = np.array([[0, 1], [0, 0]], dtype=bool)
    assert confusion(predicted, gt, ignore) == (1, 0, 1, 1)


def test_threshold_strategies() -> None:
    raw = np.array([[-1.0, 0.5, 2.0], [4.0, 0.5, 0.0]])
    normalized = prepare(raw)  # (raw + 1) / 5
    gt = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)

    def picks(threshold: str) -> list[list[int]]:
        return foreground(raw, normalized, Threshold.parse(threshold), gt).astype(int).tolist()

    assert picks("zero") == [[0, 1, 1], [1, 1, 0]]
    assert picks("value:0.5") == [[0, 0, 1], [1, 0, 0]]  # 0.6 and 1.0 > 0.5
    assert picks("top_fraction:0.5") == [[0, 1, 1], [1, 0, 0]]  # 3 highest; tie 0.5/0.5 -> row-major first
    assert picks("gt_area") == [[0, 0, 1], [1, 0, 0]]  # |G| = 2 highest
    # Otsu on (0, .3, .6, 1, .3, .2): the split {0, .2, .3, .3} | {.6, 1} has the largest
    # between-class variance (4/6 · 2/6 · (0.2 − 0.8)² = 0.08 against 0.045 and 0.032 for the others)
    assert picks("otsu") == [[0, 0, 1], [1, 0, 0]]
    assert foreground(np.ones((2, 2)), prepare(np.ones((2, 2))), Threshold("mean"), gt[:, :2]).sum() == 0
    with pytest.raises(ValueError, match="needs a value"):
        Threshold.parse("value")


def test_average_precision_by_hand() -> None:
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (-): AP = 0.5·1 + 0.5·(2/3)
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # one threshold
    assert math.isnan(average_precision(np.array([0.5]), np.array([0])))


# ------------------------------------------------------------------------------------ similarity


def test_similarity_of_identical_and_opposite_maps() -> None:
    a = np.random.default_rng(2).normal(size=(64, 64))
    for measure in ("spearman_abs", "spearman", "ssim", "hog"):
        assert similarity(a, a, measure) == pytest.approx(1.0)
    assert similarity(a, -a, "spearman") == pytest.approx(-1.0)
    assert similarity(a, -a, "spearman_abs") == pytest.approx(1.0)
    assert math.isnan(similarity(a, np.zeros_like(a), "spearman"))


def test_spearman_uses_average_ranks() -> None:
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [1, 2, 3, 4] themselves: ρ = Pearson of the ranks
    a, b = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    ra, rb = np.array([1, 2.5, 2.5, 4]) - 2.5, np.array([1, 2, 3, 4]) - 2.5
    assert similarity(a, b, "spearman") == pytest.approx((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


# ---------------------------------------------------------------------------------- randomisation


def test_vgg16_and_resnet50_randomisation_orders() -> None:
    vgg = [name for name, _ in randomisation_units(torchvision.models.vgg16(), "block")]
    assert vgg == ["classifier.6", "classifier.3", "classifier.0"] + [
        f"features.{i}" for i in (28, 26, 24, 21, 19, 17, 14, 12, 10, 7, 5, 2, 0)
    ]
    resnet = randomisation_units(torchvision.models.resnet50(), "block")
    assert [name for name, _ in resnet] == ["fc"] + [
        f"layer{stage}.{block}"
        for stage, blocks in ((4, 3), (3, 6), (2, 4), (1, 3))
        for block in reversed(range(blocks))
    ] + ["conv1"]
    assert resnet[-1][1] == ["conv1", "bn1"]  # the stem with its BatchNorm


def _changed_units(model: torch.nn.Module, other: torch.nn.Module, units: list[tuple[str, list[str]]]) -> list[str]:
    changed = []
    for name, paths in units:
        a = [t for p in paths for t in model.get_submodule(p).state_dict().values()]
        b = [t for p in paths for t in other.get_submodule(p).state_dict().values()]
        if any(not torch.equal(x, y) for x, y in zip(a, b)):
            changed.append(name)
    return changed


def test_cascading_and_independent_randomisation() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    units = randomisation_units(model, "block")
    names = [n for n, _ in units]
    cascading = [(_changed_units(model, m, units)) for _, m in randomised_models(model, "cascading", seed=3)]
    assert cascading == [names[:k] for k in range(1, len(names) + 1)]
    independent = [(_changed_units(model, m, units)) for _, m in randomised_models(model, "independent", seed=3)]
    assert independent == [[n] for n in names]
    first = [
        {k: v.clone() for k, v in m.state_dict().items()} for _, m in randomised_models(model, "cascading", seed=3)
    ]
    second = [
        {k: v.clone() for k, v in m.state_dict().items()} for _, m in randomised_models(model, "cascading", seed=3)
    ]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, second) for k in a)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched


def test_batchnorm_affine_only_keeps_running_statistics() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    model.bn1.running_mean.fill_(0.3)
    model.bn1.weight.data.fill_(2.0)
    for name, randomised in randomised_models(model, "independent", reset_bn="affine_only"):
        if name == "conv1":  # the stem: conv1 + bn1
            assert torch.all(randomised.bn1.weight == 1) and torch.all(randomised.bn1.bias == 0)
            assert torch.all(randomised.bn1.running_mean == 0.3)
        else:
            assert torch.all(randomised.bn1.weight == 2)


# ------------------------------------------------------------------------------- insertion/deletion


def test_insertion_deletion_with_a_pixel_counting_scorer() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 224, 224) + 0.1  # no zero value
    saliency = torch.rand(224, 224)

    def fraction_equal(batch: torch.Tensor) -> torch.Tensor:
        return (batch == x).all(dim=1).flatten(1).double().mean(dim=1)

    steps = torch.arange(225, dtype=torch.float64) / 224
    deletion = causal_curve(fraction_equal, x, saliency, "deletion", step=224)
    insertion = causal_curve(fraction_equal, x, saliency, "insertion", step=224)
    assert np.allclose(deletion, 1 - steps.numpy())
    assert np.allclose(insertion, steps.numpy())
    assert auc(deletion) == pytest.approx(0.5) and auc(insertion) == pytest.approx(0.5)


def test_deletion_follows_the_saliency_order() -> None:
    x = torch.ones(1, 2, 2)
    saliency = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    seen = []
    causal_curve(lambda b: seen.append(b[:, 0].clone()) or torch.zeros(b.shape[0]), x, saliency, "deletion", step=1)
    order = [(0, 1), (1, 0), (1, 1), (0, 0)]  # decreasing, ties row-major
    for i, batch in enumerate(seen[0][1:], start=1):
        removed = {(r, c) for r in range(2) for c in range(2) if batch[r, c] == 0}
        assert removed == set(order[:i])


# ------------------------------------------------------------------------------------ method specs


def test_method_specs() -> None:
    spec = MethodSpec.parse("ae:ratio=1")
    assert spec.name == "ae" and dict(spec.kwargs) == {"ratio": 1} and spec.label == "ae:ratio=1"
    assert dict(MethodSpec.parse("rsp:purge=true:hostile=3:mode=default").kwargs) == {
        "purge": True, "hostile": 3, "mode": "default"}
    assert dict(MethodSpec.parse("gradient:absolute=False").kwargs) == {"absolute": False}
    with pytest.raises(ValueError, match="method 'rsp:purge=yes': purge must be True or False; got 'yes'"):
        MethodSpec.parse("rsp:purge=yes").build(torch.nn.Conv2d(3, 4, 3))
    assert MethodSpec.parse("gradcam").default_smoothing == 0.0
    assert MethodSpec.parse("rsp").default_smoothing == 0.02
    assert MethodSpec.parse("gradient").default_reduce == "max_abs"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        parse_methods("rsp,nope")
    with pytest.raises(ValueError, match="given twice"):
        parse_methods("rsp,rsp")
