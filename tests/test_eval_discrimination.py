"""Grid pointing game and target sensitivity: closed-form values on synthetic maps, and one CLI run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from relprop.cli import main
from relprop.evaluation import contrast, grid
from relprop.evaluation.grid import Candidate
from relprop.evaluation.store import record_problem

# ------------------------------------------------------------------------------------ grid pointing


def test_a_uniform_map_scores_a_quarter_in_every_cell() -> None:
    uniform = torch.ones(6, 6)
    assert [grid.cell_share(uniform, k) for k in range(4)] == [0.25] * 4


def test_all_positive_mass_in_the_cell_scores_one_whatever_the_negative_part() -> None:
    saliency = torch.full((4, 4), -3.0)  # negative everywhere: ignored
    saliency[2:, :2] = torch.tensor([[1.0, 2.0], [0.0, 5.0]])  # cell 2 = bottom left
    assert grid.cell_share(saliency, 2) == 1.0
    assert grid.cell_share(saliency, 0) == 0.0


def test_cell_share_by_hand() -> None:
    # positive parts: cell 0 (top left) 1 + 2 = 3, cell 1 (top right) 4, cell 3 (bottom right) 1; total 8
    saliency = torch.tensor(
        [
            [1.0, 2.0, 4.0, -1.0],
            [-5.0, 0.0, 0.0, 0.0],
            [-2.0, -2.0, 0.0, 1.0],
            [0.0, -1.0, 0.0, 0.0],
        ]
    )
    assert [grid.cell_share(saliency, k) for k in range(4)] == [3 / 8, 4 / 8, 0.0, 1 / 8]


def test_a_map_without_positive_relevance_is_undefined_and_counts_as_zero() -> None:
    assert math.isnan(grid.cell_share(-torch.ones(4, 4), 0))
    summary = grid.summarise([1.0, None, 0.5, 0.25])
    # values 1, 0, 0.5, 0.25: mean 0.4375; sorted 0, .25, .5, 1 -> linear quartiles .1875, .375, .625
    assert summary["all"] == pytest.approx(0.4375) and summary["undefined"] == 1
    assert summary["quartiles"] == pytest.approx([0.1875, 0.375, 0.625])
    assert summary["histogram"]["counts"] == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    assert summary["cells"] == 4 and summary["mosaics"] == 1


def test_mosaic_assembly_places_cells_row_major() -> None:
    cells = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)  # image k is constant k
    mosaic = grid.assemble(cells)
    assert mosaic.shape == (3, 4, 4)
    expected = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert torch.equal(mosaic[1], expected)
    for k in range(4):
        assert torch.all(mosaic[0][torch.from_numpy(grid.cell_mask((4, 4), k))] == k)


def test_assembly_and_masks_refuse_bad_shapes() -> None:
    with pytest.raises(ValueError, match="4 images"):
        grid.assemble(torch.zeros(3, 3, 2, 2))
    with pytest.raises(ValueError, match="even"):
        grid.cell_mask((5, 4), 0)


def test_the_pool_keeps_the_most_confident_correct_image_per_class() -> None:
    candidates = [
        Candidate(0, 1, 1, 0.6),
        Candidate(1, 1, 1, 0.9),  # the best of class 1
        Candidate(2, 2, 7, 0.99),  # wrong: left out
        Candidate(3, 3, 3, 0.7),
        Candidate(4, 4, 4, 0.7),  # ties with 3: the lower index first
        Candidate(5, 5, 5, 0.1),  # cut by the size
    ]
    pool = grid.select_pool(candidates, 3)
    assert [c.index for c in pool] == [1, 3, 4]


def test_the_mosaic_list_is_fixed_by_the_seed() -> None:
    pool = [Candidate(i, 10 + i, 10 + i, 1 - i / 100) for i in range(9)]
    first, again = grid.draw_mosaics(pool, 5, seed=3), grid.draw_mosaics(pool, 5, seed=3)
    assert first == again
    assert first != grid.draw_mosaics(pool, 5, seed=4)
    for number, mosaic in enumerate(first):
        assert mosaic["number"] == number and len(set(mosaic["images"])) == 4
        assert mosaic["labels"] == [10 + i for i in mosaic["images"]]
    with pytest.raises(ValueError, match="at least 4"):
        grid.draw_mosaics(pool[:3], 1, seed=0)


def test_a_record_carries_one_grid_score_per_cell() -> None:
    record = {
        "index": 0,
        "id": "a",
        "status": "ok",
        "units": [{"label": 1}],
        "mosaic": {"number": 0, "images": [0, 1, 2, 3], "labels": [1, 2, 3, 4]},
        "methods": {"rsp": {"pointing": [None], "grid_pointing": [0.1, 0.2, 0.3, None]}},
    }
    assert record_problem(record) is None
    record["methods"]["rsp"]["grid_pointing"] = [0.1]
    assert record_problem(record) == 'bad results of method "rsp"'


# ------------------------------------------------------------------------------ target sensitivity


def test_identical_maps_have_similarity_one() -> None:
    a = np.random.default_rng(0).normal(size=(16, 16))
    assert contrast.target_similarity(a, a) == pytest.approx({"ssim": 1.0, "spearman": 1.0})
    # SSIM compares min-max-normalised maps: a positive affine change is no change
    assert contrast.target_similarity(a, 3 * a + 2)["ssim"] == pytest.approx(1.0)


def test_spearman_by_hand() -> None:
    a = np.arange(144.0).reshape(12, 12)  # SSIM needs at least its 11×11 window
    b = a.copy()
    b[0, 1], b[0, 2] = 2.0, 1.0  # two ranks differ by 1: ρ = 1 − 6·2 / (144·(144² − 1))
    assert contrast.target_similarity(a, b)["spearman"] == pytest.approx(1 - 12 / (144 * (144**2 - 1)), rel=1e-12)
    assert contrast.target_similarity(a, -a)["spearman"] == pytest.approx(-1.0)
    assert contrast.target_similarity(a, np.ones((12, 12)))["spearman"] is None  # constant map: undefined


def test_ssim_of_an_impulse_and_its_inverse_by_hand() -> None:
    # 11×11 maps: only the centre pixel survives SSIM's border crop, and its Gaussian window (σ 1.5,
    # radius 5) covers the whole map. a = impulse at the centre, b = 1 − a. With w = the centre weight:
    # μa = w, μb = 1 − w, σa² = σb² = w − w², σab = −(w − w²).
    a = np.zeros((11, 11))
    a[5, 5] = 1.0
    offsets = np.arange(-5, 6)
    w = 1.0 / np.exp(-(offsets**2) / (2 * 1.5**2)).sum() ** 2
    var, c1, c2 = w - w * w, 0.01**2, 0.03**2
    expected = (2 * w * (1 - w) + c1) * (-2 * var + c2) / ((w * w + (1 - w) ** 2 + c1) * (2 * var + c2))
    assert contrast.target_similarity(a, 1 - a)["ssim"] == pytest.approx(expected, rel=1e-9)


def test_the_other_classes_are_absent_from_the_image() -> None:
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert contrast.second_choice(logits, {0}) == 1  # top-1 right: the second choice
    assert contrast.second_choice(logits, {2}) == 0  # top-1 wrong: the top-1
    assert contrast.second_choice(logits, {0, 1}) == 2
    drawn = {contrast.random_class({2}, 5, seed=0, index=i, label=2) for i in range(200)}
    assert drawn == {0, 1, 3, 4}
    assert contrast.random_class({2}, 5, 0, 7, 2) == contrast.random_class({2}, 5, 0, 7, 2)
    with pytest.raises(ValueError, match="no other class"):
        contrast.random_class({0, 1}, 2, 0, 0, 0)


def test_summary_means_per_measure_and_contrast() -> None:
    units = [
        {"random": {"class": 3, "ssim": 0.2, "spearman": 0.5}, "second": {"class": 4, "ssim": 0.4, "spearman": None}},
        {"random": {"class": 5, "ssim": 0.6, "spearman": -0.1}, "second": {"class": 6, "ssim": 0.8, "spearman": 0.3}},
    ]
    random = contrast.summarise(units, "random")
    assert random["all"] == pytest.approx(0.4) and random["spearman"]["mean"] == pytest.approx(0.2)
    second = contrast.summarise(units, "second")
    assert second["spearman"] == {"mean": pytest.approx(0.3), "quartiles": pytest.approx([0.3] * 3), "units": 1,
                                  "undefined": 1}


# ------------------------------------------------------------------------------------------- CLI


def test_grid_pointing_and_target_sensitivity_from_the_command_line(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "evaluate", "--dataset", "imagenet", "--root", str(shared_data / "imagenet"),
        "--model", "efficientnet_lite0", "--weights", str(shared_data / "weights" / "efficientnet-lite0-57934424.pth"),
        "--methods", "gradcam,center", "--metrics", "pointing,grid_pointing,target_sensitivity",
        "--limit", "1", "--grid-mosaics", "1", "--grid-candidates", "8", "--out", str(out), "--no-progress",
        "--examples", "0",
    ]  # fmt: skip
    assert main(args) == 0
    assert "Grid pointing" in capsys.readouterr().out  # the summary table
    results = json.loads((out / "results.json").read_text())
    saved = json.loads((out / "mosaics.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["mosaic"] for r in records] == saved["mosaics"] == results["config"]["grid_pointing"]["mosaics_evaluated"]
    pool = {p["index"]: p["label"] for p in saved["pool"]}
    for mosaic in saved["mosaics"]:
        assert len(set(mosaic["labels"])) == 4 and [pool[i] for i in mosaic["images"]] == mosaic["labels"]
    # the center map is symmetric up to its integer centre: about a quarter of its mass in each cell
    assert results["center"]["grid_pointing"]["all"] == pytest.approx(0.25, abs=1e-3)
    assert results["center"]["grid_pointing"]["cells"] == 4
    assert results["center"]["target_sensitivity_random"]["all"] == pytest.approx(1.0)
    for key in ("target_sensitivity_random", "target_sensitivity_second"):
        assert results["gradcam"][key]["units"] == 1 and -1 <= results["gradcam"][key]["spearman"]["mean"] <= 1
    assert 0 <= results["gradcam"]["grid_pointing"]["all"] <= 1
    assert "Grid pointing" in (out / "results.md").read_text() and "Target sens." in (out / "report.html").read_text()
    # resumed: nothing to compute, the saved mosaics are reused, the same results
    assert main(args) == 0
    assert "1 image(s) already done" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    assert again["gradcam"] == results["gradcam"] and again["config"] == results["config"]
