"""``relprop evaluate`` under injected faults (issue 16): nothing finished is lost, results of different
inputs are never mixed, bad data is named, and nothing is written before the command line is validated.

docs/evaluation.md ("Faults and what survives them") lists every case with the test that covers it.
Most runs use the model-free ``center`` baseline or a ResNet-18 at 32×32 so that they take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import VOC_IDS, voc_subset

from relprop.cli import main
from relprop.evaluation import runner

def _imagenet_copy(shared_data: Path, root: Path, count: int) -> Path:
    source = shared_data / "imagenet"
    (root / "val").mkdir(parents=True)
    for path in sorted((source / "val").glob("*.JPEG"))[:count]:
        shutil.copy(path, root / "val")
    for name in ("imagenet_class_index.csv", "val_boxes.csv"):
        shutil.copy(source / name, root)
    return root


def _center(dataset: str, root: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--dataset", dataset, "--root", str(root), "--methods", "center", "--metrics", "pointing",
            "--out", str(out), "--no-progress", "--examples", "0", *extra]


def _records(out: Path, name: str = "records.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def voc_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_voc.pth"
    torch.save(torchvision.models.resnet18(num_classes=20).state_dict(), path)
    return path


def _model_args(root: Path, weights: Path, out: Path, *extra: str, methods: str = "gradient,center") -> list[str]:
    return ["evaluate", "--dataset", "voc2007", "--root", str(root), "--model", "resnet18", "--weights", str(weights),
            "--num-classes", "20", "--methods", methods, "--metrics", "pointing", "--smoothing", "0",
            "--input-size", "32", "--batch-size", "2", "--device", "cpu", "--out", str(out), "--no-progress",
            "--examples", "0", *extra]


# ------------------------------------------------------------------ real processes: --force on a live run, SIGTERM

GATED_RUN = """
import sys, time
from pathlib import Path
from relprop.evaluation import runner

gate, original, calls = Path(sys.argv[1]), runner.Evaluator.records, []

def gated(self, samples, *methods):
    calls.append(len(samples))
    while len(calls) > 1 and not gate.exists():  # the first batch runs; the second waits in flight
        time.sleep(0.05)
    return original(self, samples, *methods)

runner.Evaluator.records = gated
from relprop.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_gated(script: Path, gate: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(gate), *args], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not (path.is_file() and path.read_text().count("\n") >= count):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the gated run wrote nothing"
        time.sleep(0.1)


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "relprop.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_force_on_a_live_run_is_refused_and_sigterm_keeps_its_work(shared_data: Path, tmp_path: Path, capsys) -> None:
    """Issue 16 item 1: ``--force`` deleted the records of a run still writing to --out. A live run
    (held in its second batch) now keeps --out: the --force run is refused and deletes nothing. SIGTERM
    then ends the live run with exit 130 and its finished batch kept; the resumed run's results equal
    an uninterrupted run's."""
    root, out, gate = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out", tmp_path / "gate"
    script = tmp_path / "gated_run.py"
    script.write_text(GATED_RUN)
    args = _center("voc2007", root, out, "--batch-size", "1")
    assert main(_center("voc2007", root, tmp_path / "straight", "--batch-size", "1")) == 0

    live = _start_gated(script, gate, args)
    _wait_for_lines(out / "records.jsonl", 1, live)
    forced = _cli(args + ["--force"])
    assert forced.returncode == 2, forced.stderr
    assert "in use by another relprop evaluate" in forced.stderr
    assert [r["index"] for r in _records(out)] == [0] and (out / "config.json").is_file()  # nothing deleted
    live.send_signal(signal.SIGTERM)
    assert live.wait(timeout=120) == 130
    assert "finished work is kept" in live.communicate()[1]

    capsys.readouterr()
    assert main(args) == 0
    assert "1 image(s) already done" in capsys.readouterr().err
    assert [r["index"] for r in _records(out)] == [0, 1, 2, 3]
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert json.loads((out / "results.json").read_text())["center"] == straight["center"]


def test_the_resume_message_counts_every_rank(shared_data: Path, tmp_path: Path) -> None:
    """Under torchrun the resume message counted rank 0's share only ("2 done" where 3 were)."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    assert main(_center("voc2007", root, out, "--limit", "3")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "relprop.cli", *_center("voc2007", root, out, "--limit", "4")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 image(s) already done" in done.stderr


# ------------------------------------------------------------------ resume with changed inputs


def test_changed_weights_refuse_the_resume(shared_data: Path, voc_weights: Path, tmp_path: Path, capsys) -> None:
    """Issue 16 item 2: a resume after one conv layer of --weights changed mixed two models silently (the
    method does not matter here: the model is loaded, checked and fingerprinted for every run)."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    weights = tmp_path / "weights.pth"
    shutil.copy(voc_weights, weights)
    assert main(_model_args(root, weights, out, "--limit", "2", methods="center")) == 0
    original = weights.read_bytes()
    state = torch.load(weights, weights_only=True)
    state["layer1.0.conv1.weight"] *= 1.5
    torch.save(state, weights)
    capsys.readouterr()
    assert main(_model_args(root, weights, out, "--limit", "4", methods="center")) == 2
    assert "inputs have changed since it began (model weights)" in capsys.readouterr().err
    assert len(_records(out)) == 2 and not any(r["index"] >= 2 for r in _records(out))
    weights.write_bytes(original)  # the same content again (a new modification time): resumable
    assert main(_model_args(root, weights, out, "--limit", "4", methods="center")) == 0
    assert [r["index"] for r in _records(out)] == [0, 1, 2, 3]


def test_changed_annotations_refuse_the_resume(shared_data: Path, tmp_path: Path, capsys) -> None:
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    assert main(_center("voc2007", root, out, "--limit", "2")) == 0
    xml = root / "Annotations" / f"{VOC_IDS[0]}.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<xmin>174</xmin>", "<xmin>20</xmin>"))
    capsys.readouterr()
    assert main(_center("voc2007", root, out, "--limit", "3")) == 2
    assert "annotations: Annotations (4 file(s))" in capsys.readouterr().err
    xml.write_text(text)
    assert main(_center("voc2007", root, out, "--limit", "3")) == 0


# ------------------------------------------------------------------ bad data


def _edit_csv_row(path: Path, image: str, box: str) -> int:
    """Set the box of ``image``'s first row of val_boxes.csv to ``box``; the line number."""
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(image))
    fields = lines[number].split(",")
    fields[5:9] = box.split(",")
    lines[number] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return number + 1


def _edit_voc_box(path: Path, box: tuple[str, str, str, str]) -> None:
    text = path.read_text()
    start, end = text.index("<bndbox>"), text.index("</bndbox>")
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    path.write_text(text[:start] + f"<bndbox>{coords}" + text[end:])


@pytest.mark.parametrize(
    "box, problem",
    [("5000,5000,6000,6000", "lies outside the 341x256 image"), ("nan,10,20,30", "non-finite"),
     ("30,10,20,40", "inverted")],
    ids=["outside", "NaN", "inverted"],
)
def test_invalid_imagenet_boxes_are_named_skipped_and_counted(box, problem, shared_data, tmp_path, capsys) -> None:
    """Issue 16 item 4: a box outside the image was scored as a miss (center 100 % -> 83.3 %); a NaN box
    aborted the run with "cannot convert float NaN to integer" and no file or row."""
    root, out = _imagenet_copy(shared_data, tmp_path / "imagenet", 6), tmp_path / "out"
    assert main(_center("imagenet", root, tmp_path / "clean", "--limit", "6")) == 0
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())["center"]["pointing"]
    line = _edit_csv_row(root / "val_boxes.csv", "ILSVRC2012_val_00000001.JPEG", box)
    capsys.readouterr()
    assert main(_center("imagenet", root, out, "--limit", "6")) == 1
    where = f"{root / 'val_boxes.csv'} line {line}"
    assert where in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["invalid_boxes"] == 1
    pointing = results["center"]["pointing"]
    assert pointing["pairs"] == clean["pairs"] - 1  # not scored as a miss
    others = {c: v for c, v in clean["per_class"].items() if c != _first_class(root)}
    assert len(others) == len(clean["per_class"]) - 1  # six images of six classes
    assert pointing["all"] == pytest.approx(sum(others.values()) / len(others))
    assert where in (out / "results.md").read_text() and problem in (out / "results.md").read_text()


def _first_class(root: Path) -> str:
    """The class name of the first image of val_boxes.csv."""
    import csv

    with (root / "val_boxes.csv").open() as f:
        label = int(next(csv.DictReader(f))["label"])
    with (root / "imagenet_class_index.csv").open() as f:
        return next(r["name"] for r in csv.DictReader(f) if int(r["index"]) == label)


@pytest.mark.parametrize("box", [("900", "900", "950", "950"), ("349", "101", "174", "351"), ("nan", "1", "2", "3")],
                         ids=["outside", "inverted", "NaN"])
def test_invalid_voc_boxes_are_named_skipped_and_counted(box, shared_data, tmp_path, capsys) -> None:
    """Issue 16 item 4 for VOC XML: the person of 000027 (its only object) gets a box that cannot be scored."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    xml = root / "Annotations" / f"{VOC_IDS[0]}.xml"
    _edit_voc_box(xml, box)
    capsys.readouterr()
    assert main(_center("voc2007", root, out)) == 1
    assert f"{xml} object 1" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["invalid_boxes"] == 1
    assert results["config"]["data"]["evaluated"] == len(VOC_IDS)  # the image is read; its other classes count
    first = _records(out)[0]
    assert len(first["invalid_boxes"]) == 1 and first["units"] == []  # the person was its only object


@pytest.mark.parametrize(
    "damage, message",
    [(lambda d: d.pop("annotations"), 'has no "annotations" list'),
     (lambda d: d.pop("images"), 'has no "images" list'),
     (lambda d: d.pop("categories"), 'has no "categories" list'),
     (lambda d: d["images"][3].pop("file_name"), 'images[3] has no "file_name"'),
     (lambda d: d["images"][0].pop("width"), 'images[0] has no "width"'),
     (lambda d: d["annotations"].clear(), 'the "annotations" list is empty')],
    ids=["annotations", "images", "categories", "file_name", "width", "no annotations"],
)
def test_a_coco_file_without_required_keys_is_named(damage, message, shared_data, tmp_path, capsys) -> None:
    """Issue 16 item 5: no "annotations" or "images" gave exit 0 with nothing evaluated; no categories,
    file_name or width a KeyError traceback."""
    root = tmp_path / "coco"
    shutil.copytree(shared_data / "coco", root, ignore=shutil.ignore_patterns("*.jpg"))
    path = root / "annotations" / "instances_val2014_subset.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    assert main(_center("coco2014", root, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_read_again_on_resume(shared_data: Path, tmp_path: Path, capsys) -> None:
    """Issue 16 item 6: an image recorded as unreadable stayed so after the file was fixed."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    image = root / "JPEGImages" / f"{VOC_IDS[1]}.jpg"
    image.write_bytes(image.read_bytes()[:300])
    assert main(_center("voc2007", root, out)) == 1
    assert json.loads((out / "results.json").read_text())["config"]["data"]["unreadable"] == 1
    shutil.copy(shared_data / "voc2007" / "JPEGImages" / image.name, image)
    capsys.readouterr()
    assert main(_center("voc2007", root, out)) == 0
    assert "1 unreadable before (read again)" in capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())["config"]["data"]
    assert (data["evaluated"], data["unreadable"]) == (len(VOC_IDS), 0)
    assert main(_center("voc2007", root, tmp_path / "straight")) == 0
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert json.loads((out / "results.json").read_text())["center"] == straight["center"]


def _bomb(path: Path) -> Path:
    """A PNG whose header claims 30000x30000 pixels (Pillow refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0"))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_an_unreadable_image(shared_data: Path, tmp_path: Path, capsys) -> None:
    """PIL's DecompressionBombError is not an OSError: evaluate (and sanity) crashed at that image on every rerun."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    bomb = _bomb(root / "JPEGImages" / f"{VOC_IDS[2]}.jpg")
    assert main(_center("voc2007", root, out)) == 1
    assert str(bomb) in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["config"]["data"]["unreadable"] == 1
    sanity = ["sanity", "--model", "resnet18", "--method", "gradient", "--images", str(bomb), "--size", "32",
              "--out", str(tmp_path / "sanity")]
    assert main(sanity) == 2
    assert str(bomb) in capsys.readouterr().err and not (tmp_path / "sanity").exists()


# ------------------------------------------------------------------ damaged records


@pytest.mark.parametrize(
    "line, problem",
    [(b"{}", 'no image "index"'), (b"[1, 2]", "a JSON list, not a record"),
     (b'{"index": 1, "id": "000068", "status": "ok", "size": [1, 1], "units": []}', 'no "methods"'),
     (b"\x00\x00\x00\x00", "not JSON")],
    ids=["empty object", "list", "no methods", "NUL bytes"],
)
def test_a_damaged_record_line_is_named_and_can_be_dropped(line, problem, shared_data, tmp_path, capsys) -> None:
    """Issue 16: JSON lines that are not records gave a traceback, a NUL line a utf-32-be codec message."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    assert main(_center("voc2007", root, out, "--limit", "2")) == 0
    records = out / "records.jsonl"
    good = records.read_bytes().splitlines()
    records.write_bytes(good[0] + b"\n" + line + b"\n")  # the second image's record replaced by the damage
    capsys.readouterr()
    assert main(_center("voc2007", root, out)) == 2
    err = capsys.readouterr().err
    assert f"{records}, line 2 is damaged ({problem}" in err and "--drop-damaged" in err
    assert main(_center("voc2007", root, out, "--drop-damaged")) == 0
    assert (out / "records.jsonl.damaged").read_bytes() == line + b"\n"
    assert sorted(r["index"] for r in _records(out)) == [0, 1, 2, 3]
    assert _records(out)[0] == json.loads(good[0])  # the intact record was kept, not recomputed


# ------------------------------------------------------------------ nothing written before validation


@pytest.mark.parametrize(
    "extra, message",
    [(["--metrics", "insdel"], "insdel need a model"),
     (["--model", "resnet18", "--num-classes", "20", "--methods", "rsp:ratio=2"], "rsp:ratio=2"),
     (["--model", "resnet18", "--num-classes", "20", "--methods", "ae:ratio=-1"], "ratio"),
     (["--device", "tpu"], "unknown --device 'tpu'"),
     (["--model", "resnet18"], "voc2007 needs a multi-label classifier with 20 outputs")],
    ids=["insdel without a model", "rsp:ratio=2", "ae:ratio=-1", "device tpu", "1000-class model on VOC"],
)
def test_a_bad_command_writes_nothing(extra, message, shared_data, tmp_path, capsys) -> None:
    """Issue 16: these left a config.json behind, so that the corrected command was refused as "another
    configuration" (--device tpu: a RuntimeError traceback)."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    assert main(_center("voc2007", root, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(_center("voc2007", root, out)) == 0


def test_nan_weights_are_refused_before_anything_is_written(voc_weights: Path, shared_data, tmp_path, capsys):
    """Issue 16: NaN weights gave "relevance overflowed… explain in float64" and left an empty --out."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    weights = tmp_path / "nan.pth"
    state = torch.load(voc_weights, weights_only=True)
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, weights)
    assert main(_model_args(root, weights, out)) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "fc.weight" in err and "NaN" in err and "float64" not in err
    assert not out.exists()


def test_the_class_count_is_checked_before_the_data_set_is_read(tmp_path: Path, capsys) -> None:
    """Issue 15: "model has 1000 outputs but voc2007 has 20 classes" came after the data set was loaded
    (87 s for COCO); the root here is empty, so reading it first would report the layout instead."""
    for dataset, classes in (("voc2007", 20), ("coco2014", 80)):
        assert main(_center(dataset, tmp_path, tmp_path / "out", "--model", "resnet18", "--methods", "gradient")) == 2
        err = capsys.readouterr().err
        assert f"has 1000 outputs but {dataset} has {classes} classes" in err and "multi-label" in err
        assert "docs/evaluation.md" in err


def test_coco_is_accepted_for_coco2014(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(_center("coco", shared_data / "coco", out, "--limit", "2")) == 0
    assert json.loads((out / "results.json").read_text())["config"]["dataset"] == "coco2014"
    assert main(_center("coco2014", shared_data / "coco", out, "--limit", "3")) == 0  # the same run, resumed


# ------------------------------------------------------------------ interrupts and progress


def test_an_interrupt_keeps_the_finished_methods_of_the_batch_in_flight(
    shared_data: Path, voc_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: Ctrl-C lost the whole batch in flight. Interrupted in the second method of the second
    batch, the first method's results of that batch are kept and only the second is computed on resume."""
    root = voc_subset(shared_data, tmp_path / "voc")
    assert main(_model_args(root, voc_weights, tmp_path / "straight")) == 0
    original = runner.Evaluator._method_results
    calls: list[tuple[str, tuple[int, ...]]] = []

    def interrupted(self, spec, units, *others):  # type: ignore[no-untyped-def]
        calls.append((spec.label, tuple(sorted({u.sample.index for u in units}))))
        if len(calls) == 4:  # batch 2, method 2
            raise KeyboardInterrupt
        return original(self, spec, units, *others)

    monkeypatch.setattr(runner.Evaluator, "_method_results", interrupted)
    out = tmp_path / "out"
    assert main(_model_args(root, voc_weights, out)) == 130
    lines = _records(out)
    assert [(r["index"], sorted(r["methods"])) for r in lines] == [
        (0, ["center", "gradient"]), (1, ["center", "gradient"]), (2, ["gradient"]), (3, ["gradient"])]

    def counted(self, spec, units, *others):  # type: ignore[no-untyped-def]
        calls.append((spec.label, tuple(sorted({u.sample.index for u in units}))))
        return original(self, spec, units, *others)

    calls.clear()
    monkeypatch.setattr(runner.Evaluator, "_method_results", counted)
    assert main(_model_args(root, voc_weights, out)) == 0
    assert calls == [("center", (2, 3))]
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert json.loads((out / "results.json").read_text()) == straight


def test_progress_off_a_terminal_never_mixes_with_messages(shared_data: Path, tmp_path: Path, capsys) -> None:
    """Issue 15: off a terminal tqdm's carriage-return updates interleaved with the per-image lines."""
    root = voc_subset(shared_data, tmp_path / "voc")
    (root / "JPEGImages" / f"{VOC_IDS[1]}.jpg").write_bytes(b"not a jpeg")
    args = [a for a in _center("voc2007", root, tmp_path / "out", "--batch-size", "1") if a != "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert all(line.startswith("relprop: ") for line in lines), lines
    assert "relprop: evaluate: 4/4 images" in lines and any("skipping" in line for line in lines)


# ------------------------------------------------------------------ random weights, sanity, demo


def test_random_weights_are_flagged_on_the_console_and_in_the_report(shared_data: Path, tmp_path: Path, capsys):
    """Issue 15: without --weights, evaluate said "random weights" nowhere but "weights": null."""
    root, out = voc_subset(shared_data, tmp_path / "voc"), tmp_path / "out"
    args = ["--model", "resnet18", "--num-classes", "20", "--methods", "gradient", "--input-size", "32",
            "--limit", "1"]
    assert main(_center("voc2007", root, out, *args)) == 0
    assert "resnet18 has random weights" in capsys.readouterr().err
    assert "model: resnet18 (random weights)" in (out / "results.md").read_text()
    assert "<h1>relprop evaluation: voc2007, resnet18 (random weights)</h1>" in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["config"]["random_weights"] is True


def test_sanity_flags_random_weights_and_refuses_a_file_as_out(shared_data: Path, tmp_path: Path, capsys) -> None:
    image = shared_data / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG"
    args = ["sanity", "--model", "resnet18", "--method", "gradient", "--images", str(image), "--size", "32",
            "--measures", "spearman"]
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 0
    assert "resnet18 has random weights" in capsys.readouterr().err
    assert json.loads((out / "sanity_gradient.json").read_text())["config"]["random_weights"] is True
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(args + ["--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "mine"


def test_demo_refuses_a_file_as_out_before_any_work(tmp_path: Path, capsys) -> None:
    """Issue 16: demo --out FILE raised FileExistsError after 18 s of work."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["demo", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "mine"
