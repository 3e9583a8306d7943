"""``relprop evaluate`` and ``relprop sanity``: protocol check on the shared VOC subset, resume,
refusals, unreadable files and a two-process torchrun run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import voc_subset

from relprop.cli import main
from relprop.evaluation import runner

VOC_NAMES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


# ------------------------------------------------------------- acceptance 2: center on the shared VOC07


def center_pointing_by_protocol(root: Path) -> tuple[float, float]:
    """evaluation.md §1.1-1.6 written out directly: (All, Difficult) class-mean accuracies in percent."""
    with (root / "pointing_game_ebp_voc07_difficult_subset.txt").open() as f:
        flags = {row[0]: [int(v) for v in row[1:]] for row in csv.reader(f, delimiter="\t") if row}
    scores = {"all": {}, "difficult": {}}
    for image_id in (root / "ImageSets" / "Main" / "test.txt").read_text().split():
        xml = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        width, height = int(xml.find("size/width").text), int(xml.find("size/height").text)
        u, v = width / 2, height / 2
        objects = [
            (
                o.find("name").text,
                int(o.find("difficult").text),
                [int(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")],
            )
            for o in xml.iter("object")
        ]
        for name in {n for n, _, _ in objects}:
            mine = [o for o in objects if o[0] == name]
            if all(d == 1 for _, d, _ in mine):
                continue  # every object of the class is PASCAL-difficult: the pair is skipped
            hit = False
            for _, _, (x0, y0, x1, y1) in mine:  # 1-based inclusive boxes -> pixels x0-1 .. x1-1
                xs, ys = np.arange(x0 - 1, x1), np.arange(y0 - 1, y1)
                hit |= bool(((xs[None, :] - u) ** 2 + (ys[:, None] - v) ** 2 < 15**2).any())
            c = VOC_NAMES.index(name)
            subsets = ["all"] + (["difficult"] if image_id not in flags or flags[image_id][c] == 1 else [])
            for subset in subsets:
                scores[subset].setdefault(c, []).append(hit)
    return tuple(100 * np.mean([np.mean(h) for h in scores[s].values()]) for s in ("all", "difficult"))  # type: ignore[return-value]


def test_center_pointing_on_shared_voc_matches_the_protocol(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "voc2007"
    code = main(
        [
            "evaluate",
            "--dataset",
            "voc2007",
            "--root",
            str(root),
            "--methods",
            "center",
            "--metrics",
            "pointing",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--examples",
            "0",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    expected_all, expected_difficult = center_pointing_by_protocol(root)
    assert results["center"]["pointing"]["all"] == pytest.approx(expected_all, abs=1e-9)
    assert results["center"]["pointing"]["difficult"] == pytest.approx(expected_difficult, abs=1e-9)
    assert results["config"]["pointing"]["tolerance_px"] == 15
    assert results["config"]["data"]["evaluated"] == 39
    report = (tmp_path / "out" / "report.html").read_text()
    assert "pointing_game_ebp_voc07_difficult_subset.txt" in report


# ----------------------------------------------------------------------------------- a small model


@pytest.fixture(scope="module")
def voc_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_voc.pth"
    torch.save(torchvision.models.resnet18(num_classes=20).state_dict(), path)
    return path


def _args(shared_data: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--dataset",
        "voc2007",
        "--root",
        str(shared_data / "voc2007"),
        "--model",
        "resnet18",
        "--weights",
        str(weights),
        "--num-classes",
        "20",
        "--methods",
        "rsp,center",
        "--metrics",
        "pointing,miou",
        "--input-size",
        "32",
        "--limit",
        "5",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        "--examples",
        "0",
        *extra,
    ]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(
    shared_data: Path, voc_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_args(shared_data, voc_weights, tmp_path / "straight")) == 0

    original = runner.Evaluator.records
    evaluated: list[int] = []

    def interrupted_after_two_batches(self, samples, *methods):  # type: ignore[no-untyped-def]
        if len(evaluated) >= 4:
            raise KeyboardInterrupt
        evaluated.extend(s.index for s in samples)
        return original(self, samples, *methods)

    monkeypatch.setattr(runner.Evaluator, "records", interrupted_after_two_batches)
    assert main(_args(shared_data, voc_weights, tmp_path / "resumed")) == 130  # interrupted
    records = tmp_path / "resumed" / "records.jsonl"
    assert [json.loads(line)["index"] for line in records.read_text().splitlines()] == [0, 1, 2, 3]
    assert not (tmp_path / "resumed" / "results.json").exists()
    with records.open("a") as f:  # a record cut off in the middle of writing
        f.write('{"index": 4, "id": "0001')

    def counting(self, samples, *methods):  # type: ignore[no-untyped-def]
        evaluated.extend(s.index for s in samples)
        return original(self, samples, *methods)

    evaluated.clear()
    monkeypatch.setattr(runner.Evaluator, "records", counting)
    assert main(_args(shared_data, voc_weights, tmp_path / "resumed")) == 0
    assert evaluated == [4]  # only the image not yet done
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert resumed == straight


def test_a_method_added_to_a_finished_run_is_evaluated_alone(
    shared_data: Path, voc_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    def methods(*labels: str) -> list[str]:
        args = _args(shared_data, voc_weights, tmp_path / "grown")
        args[args.index("--methods") + 1] = ",".join(labels)
        return args

    assert main(methods("rsp", "center")) == 0
    assert main(_args(shared_data, voc_weights, tmp_path / "straight", "--methods", "gradcam,rsp,center")) == 0
    original = runner.Evaluator.records
    asked: list[tuple[list[int], list[str]]] = []

    def counting(self, samples, methods=None):  # type: ignore[no-untyped-def]
        asked.append(([s.index for s in samples], [m.label for m in methods]))
        return original(self, samples, methods)

    monkeypatch.setattr(runner.Evaluator, "records", counting)
    assert main(methods("gradcam", "rsp", "center")) == 0  # gradcam added, in another position
    assert asked and all(labels == ["gradcam"] for _, labels in asked)
    assert sorted(i for indices, _ in asked for i in indices) == [0, 1, 2, 3, 4]
    grown = json.loads((tmp_path / "grown" / "results.json").read_text())
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert grown["config"]["methods"] == ["gradcam", "rsp", "center"]
    assert {m: grown[m] for m in ("gradcam", "rsp", "center")} == {m: straight[m] for m in ("gradcam", "rsp", "center")}
    capsys.readouterr()
    assert main(methods("gradcam", "center")) == 2  # a method removed: refused
    assert "differs in: methods; methods may be added to a run, not removed)" in capsys.readouterr().err


def test_refuses_foreign_or_different_output_folders(
    shared_data: Path, voc_weights: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_args(shared_data, voc_weights, out, "--limit", "1")) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(_args(shared_data, voc_weights, out, "--limit", "1", "--force")) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only relprop's own files
    assert main(_args(shared_data, voc_weights, out, "--limit", "1", "--tolerance", "10")) == 2
    assert "differs in: pointing" in capsys.readouterr().err


@pytest.mark.parametrize("kind, name, message", [
    ("RecordWriter", "records.jsonl", "another relprop evaluate"),  # a second writer on the same records
    ("OutLock", "out", "in use by another relprop evaluate"),  # a second run on a folder in use
])
def test_a_second_holder_of_a_lock_is_refused(tmp_path: Path, kind: str, name: str, message: str) -> None:
    from relprop.errors import RelpropError
    from relprop.evaluation import store

    lock = getattr(store, kind)
    first = lock(tmp_path / name)
    try:
        with pytest.raises(RelpropError, match=message):
            lock(tmp_path / name)
    finally:
        first.close()
    lock(tmp_path / name).close()  # free again once the first is closed


def test_unreadable_image_is_reported_skipped_and_counted(shared_data: Path, tmp_path: Path) -> None:
    root = voc_subset(shared_data, tmp_path / "voc", ["000027", "000068", "000175"])
    broken = root / "JPEGImages" / "000068.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "voc2007",
                "--root",
                str(root),
                "--methods",
                "center",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 1  # results written, an image skipped
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["evaluated"] == 2 and results["config"]["data"]["unreadable"] == 1
    assert results["center"]["pointing"]["difficult"] is None  # this copy has no flag file
    markdown = (out / "results.md").read_text()
    assert str(broken) in markdown and "No difficult-flag file" in markdown


def test_torchrun_two_processes_write_the_single_process_results(
    shared_data: Path, voc_weights: Path, tmp_path: Path
) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(_args(shared_data, voc_weights, single)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "relprop.cli",
        *_args(shared_data, voc_weights, double),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in double.glob("records*.jsonl")) == ["records.rank0.jsonl", "records.rank1.jsonl"]
    # The ranks explain other batches with one thread each, so maps differ by float rounding (~1e-7);
    # counts and labels must match exactly, scores up to that rounding.
    expected = _leaves(json.loads((single / "results.json").read_text()))
    actual = _leaves(json.loads((double / "results.json").read_text()))
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert actual[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        else:
            assert actual[key] == value, key
    assert json.loads((double / "run.json").read_text())["world_size"] == 2


def _leaves(tree: object, path: str = "") -> dict[str, object]:
    """Nested JSON -> {"a/b/c": leaf}, so that pytest.approx can compare the numbers."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _leaves(value, f"{path}/{i}").items()}
    return {path: tree}


def test_sanity_command_writes_the_curve(shared_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), weights)
    before = {k: v.clone() for k, v in torch.load(weights, weights_only=True).items()}
    image = shared_data / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG"
    assert (
        main(
            [
                "sanity",
                "--model",
                "resnet18",
                "--weights",
                str(weights),
                "--method",
                "rsp",
                "--images",
                str(image),
                "--size",
                "48",
                "--measures",
                "spearman_abs,spearman",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    curves = json.loads((tmp_path / "out" / "sanity_rsp.json").read_text())["curves"]["cascading"]
    assert curves["steps"][0] == "original" and len(curves["steps"]) == 11  # 10 blocks of ResNet-18
    assert curves["curves"]["spearman"]["mean"][0] == pytest.approx(1.0)
    assert (tmp_path / "out" / "sanity_rsp.png").stat().st_size > 0
    after = torch.load(weights, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_imagenet_with_the_pretrained_efficientnet(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "imagenet",
                "--root",
                str(shared_data / "imagenet"),
                "--model",
                "efficientnet_lite0",
                "--weights",
                str(shared_data / "weights" / "efficientnet-lite0-57934424.pth"),
                "--methods",
                "rsp,center",
                "--metrics",
                "pointing,energy,miou",
                "--limit",
                "2",
                "--out",
                str(out),
                "--no-progress",
                "--examples",
                "1",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["input"]["mean"] == pytest.approx([127 / 255] * 3)
    assert results["config"]["input"]["mode"] == "fixed"
    for method in ("rsp", "center"):
        assert results[method]["pointing"]["pairs"] == 2 and results[method]["pointing"]["difficult"] is None
        assert 0 <= results[method]["miou"]["all"] <= 100
    assert "ImageNet has no difficult subset" in (out / "report.html").read_text()


def test_energy_insertion_deletion_and_sensitivity_metrics_run(
    shared_data: Path, voc_weights: Path, tmp_path: Path
) -> None:
    args = _args(
        shared_data,
        voc_weights,
        tmp_path / "out",
        "--limit",
        "1",
        "--methods",
        "rsp",
        "--metrics",
        "energy,insdel,sensitivity",
        "--insdel-step",
        "64",
        "--sensitivity-images",
        "1",
    )
    assert main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["rsp"]
    assert 0 <= results["energy"]["all"] <= 100
    for key in ("insertion", "deletion"):
        assert 0 <= results[key]["all"] <= 1 and results[key]["units"] == 1
    for mode in ("cascading", "independent"):
        curves = results[f"sensitivity_{mode}"]
        assert len(curves["steps"]) == 11 and curves["units"] == 1
        assert curves["curves"]["spearman_abs"]["mean"][0] == pytest.approx(1.0)


def test_coco_center_pointing_counts_every_annotated_class(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "coco"
    data = json.loads((root / "annotations" / "instances_val2014_subset.json").read_text())
    first = sorted(img["id"] for img in data["images"])[:5]
    pairs = {(a["image_id"], a["category_id"]) for a in data["annotations"] if a["image_id"] in first}
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "coco2014",
                "--root",
                str(root),
                "--methods",
                "center",
                "--metrics",
                "pointing",
                "--limit",
                "5",
                "--out",
                str(out),
                "--no-progress",
                "--examples",
                "0",
            ]
        )
        == 0
    )
    pointing = json.loads((out / "results.json").read_text())["center"]["pointing"]
    assert pointing["pairs"] == len(pairs)
    assert pointing["difficult"] is not None
