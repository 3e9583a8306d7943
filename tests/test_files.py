"""Files: weights load only as plain tensors, the CLI writes nowhere but ``--out`` and never over a
user's folder, and unreadable images / annotations are reported by path while the rest goes on.

Extends tests/test_cli.py (explain's refusals and one-line errors), tests/test_evaluate_cli.py
(evaluate's refusals, an unreadable image) and tests/test_eval_datasets.py (DataError paths).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import relprop
from relprop.cli import main
from relprop.errors import RelpropError
from relprop.evaluation.datasets import DataError, open_dataset
from relprop.zoo import load_model

MODEL = "squeezenet1_1"  # the cheapest torchvision classifier
VOC_IDS = ["000027", "000068", "000175"]


# ------------------------------------------------------------------------------------ weights


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.fixture
def malicious_weights(tmp_path: Path) -> tuple[Path, Path]:
    """(a weights file whose unpickling creates ``marker``, marker path)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    state = torchvision.models.get_model(MODEL).state_dict()
    state["extra"] = Payload(marker)
    torch.save(state, path)
    return path, marker


def test_the_payload_is_live(malicious_weights):
    """Loading the file with pickle (weights_only=False) does run the payload: the tests below mean something."""
    path, marker = malicious_weights
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_model_never_unpickles_code(malicious_weights):
    path, marker = malicious_weights
    with pytest.raises(RelpropError, match="weights_only=True") as info:
        load_model(MODEL, weights=path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the pickled payload ran"


def test_cli_never_unpickles_code(malicious_weights, tmp_path, capsys):
    path, marker = malicious_weights
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    code = main(["explain", str(image), "--model", MODEL, "--weights", str(path), "--method", "gradient",
                 "--out", str(tmp_path / "out")])
    assert code != 0 and str(path) in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_every_torch_load_in_relprop_uses_weights_only():
    """Static check of the package source: each ``torch.load(...)`` passes ``weights_only=True``, and
    no ``np.load`` allows pickles."""
    package = Path(relprop.__file__).parent
    calls = []
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{source.name}:{node.lineno}", owner, keywords))
    torch_loads = [c for c in calls if c[1] == "torch"]
    assert torch_loads, "relprop loads weights somewhere"
    assert all(k.get("weights_only") == "True" for _, _, k in torch_loads), torch_loads
    assert all(k.get("allow_pickle") in (None, "False") for _, owner, k in calls if owner in ("np", "numpy"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torchvision.models.get_model(MODEL, num_classes=10).state_dict(), "wrongly shaped"),
        (lambda: torchvision.models.mobilenet_v3_small().state_dict(), "another architecture"),
        (lambda: torch.zeros(3), "holds a Tensor, not a state dict"),
        (lambda: {"features.0.weight": "not a tensor"}, "does not fit"),
    ],
    ids=["other number of classes", "other architecture", "a tensor", "a dict of strings"],
)
def test_weights_that_do_not_fit_are_a_clear_error(make, message, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(make(), path)
    with pytest.raises(RelpropError, match=message) as info:
        load_model(MODEL, weights=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "wrap, hint",
    [(lambda state: {"epoch": 3, "state_dict": state}, "checkpoint['state_dict']"),
     (lambda state: {f"module.{k}": v for k, v in state.items()}, "'module.'")],
    ids=["training checkpoint", "DataParallel prefix"],
)
def test_common_weight_file_mistakes_get_a_hint(wrap, hint, tmp_path):
    """The two usual ways a state dict comes wrapped: the message says how to unwrap it."""
    path = tmp_path / "weights.pth"
    torch.save(wrap(torchvision.models.get_model(MODEL).state_dict()), path)
    with pytest.raises(RelpropError) as info:
        load_model(MODEL, weights=path)
    assert hint in str(info.value) and str(path) in str(info.value)


def test_a_folder_given_as_weights_is_named(tmp_path):
    with pytest.raises(RelpropError, match=f"cannot read weights file {tmp_path}"):
        load_model(MODEL, weights=tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy format"])
@pytest.mark.parametrize("keep", [0.01, 0.5, 0.999])
def test_truncated_weights_are_called_truncated(legacy, keep, tmp_path):
    """Issue 16: a cut-off .pth said "a pickled model or another file type?"; it is truncated or corrupt."""
    path = tmp_path / "weights.pth"
    torch.save(torchvision.models.get_model(MODEL).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(RelpropError, match="truncated or corrupt") as info:
        load_model(MODEL, weights=path)
    assert str(path) in str(info.value)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(RelpropError, match="not found"):
        load_model(MODEL, weights=tmp_path / "missing.pth")


def test_a_file_of_another_type_is_not_called_truncated(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("hello, not weights")
    with pytest.raises(RelpropError, match="another file type") as info:
        load_model(MODEL, weights=path)
    assert "truncated" not in str(info.value)


def test_weights_with_nan_are_refused_naming_the_file_and_tensor(tmp_path):
    """Issue 16: NaN weights gave "relevance overflowed… explain in float64" after the work had started."""
    path = tmp_path / "weights.pth"
    state = torchvision.models.get_model(MODEL).state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(RelpropError, match="features.0.weight.*NaN or inf") as info:
        load_model(MODEL, weights=path)
    assert str(path) in str(info.value)


class SilentServer:
    """A TCP server that accepts connections and never answers (a network that drops everything);
    it closes them after ``hold_s`` seconds."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        held: list[tuple[float, socket.socket]] = []
        while not self.stopped.is_set():
            with contextlib.suppress(OSError):
                held.append((time.monotonic(), self.sock.accept()[0]))
            for opened, conn in [h for h in held if time.monotonic() - h[0] > self.hold_s]:
                conn.close()
                held.remove((opened, conn))
        for _, conn in held:
            conn.close()
        self.sock.close()


def test_default_weights_fail_fast_when_the_network_never_answers(tmp_path, monkeypatch):
    """Issue 15: --weights DEFAULT behind a network that drops packets failed only after 210 s. The
    download now gives up after zoo.DOWNLOAD_TIMEOUT_S without an answer, with the usual message.
    (Before: the silent server's 60 s, then a message without "no answer".)"""
    from relprop import zoo

    server = SilentServer(hold_s=60)
    try:
        monkeypatch.setattr(zoo, "DOWNLOAD_TIMEOUT_S", 1.0)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setenv("NO_PROXY", "")
        with pytest.raises(RelpropError, match=r"^download failed: pass --weights PATH \(no answer within 1 s"):
            load_model(MODEL, weights="DEFAULT")
    finally:
        server.stopped.set()


# ------------------------------------------------------------------------- writing only to --out


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of every file under ``root`` except under ``skip``."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*") if p.is_file() and skip not in p.parents
    }


def _sandboxed_run(sandbox: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m relprop.cli ARGS`` with the working directory, HOME and caches inside ``sandbox``."""
    home = sandbox / "home"
    env = {
        **os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"), "TORCH_HOME": str(home / ".torch"), "OMP_NUM_THREADS": "1",
    }
    env.pop("MPLCONFIGDIR", None)
    return subprocess.run([sys.executable, "-m", "relprop.cli", *args], cwd=sandbox / "cwd", env=env,
                          capture_output=True, text=True, timeout=300)


MATPLOTLIB_CACHE = os.path.join("home", ".cache", "matplotlib")
"""matplotlib's per-user font cache, built once per machine by any program that imports it."""


def _sandbox(tmp_path: Path) -> Path:
    sandbox = tmp_path / "sandbox"
    for folder in ("cwd", "home", "in"):
        (sandbox / folder).mkdir(parents=True)
    return sandbox


def test_explain_writes_only_into_out(tmp_path):
    sandbox = _sandbox(tmp_path)
    rng = np.random.default_rng(0)
    names = ["my photo.jpg", "..jpg", "ünïcode✓.png", "grid.png", "my_photo.png"]  # odd names, clashing stems
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(sandbox / "in" / name, format="PNG")
    out = sandbox / "results" / "run"
    before = _tree(sandbox, out)
    done = _sandboxed_run(sandbox, ["explain", *[str(sandbox / "in" / n) for n in names], "--model", MODEL,
                                    "--method", "gradient,rsp", "--out", str(out), "--save-npy"])
    assert done.returncode == 0, done.stderr[-2000:]
    after = _tree(sandbox, out)
    new_or_changed = {k for k in after if before.get(k) != after[k] and not k.startswith(MATPLOTLIB_CACHE)}
    assert not new_or_changed and before.keys() <= after.keys()
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == len(names) * 2 * 2 + 1  # png + npy per image and method, one grid
    assert "grid.png" in written and all(out in p.resolve().parents for p in out.iterdir())


def _voc_copy(shared_data: Path, root: Path) -> Path:
    source = shared_data / "voc2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id in VOC_IDS:
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
        shutil.copy(source / "Annotations" / f"{image_id}.xml", root / "Annotations")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(VOC_IDS) + "\n")
    return root


def test_evaluate_writes_only_into_out_and_skips_unreadable_files_by_path(shared_data, tmp_path):
    """A truncated JPEG and a broken XML annotation: both named on stderr and in the report, counted
    as unreadable; the remaining image is evaluated; nothing is written outside --out."""
    sandbox = _sandbox(tmp_path)
    root = _voc_copy(shared_data, sandbox / "in" / "voc")
    jpeg = root / "JPEGImages" / f"{VOC_IDS[0]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:2000])
    xml = root / "Annotations" / f"{VOC_IDS[1]}.xml"
    xml.write_text("<annotation><size><width>12")
    out = sandbox / "out"
    before = _tree(sandbox, out)
    done = _sandboxed_run(sandbox, ["evaluate", "--dataset", "voc2007", "--root", str(root), "--methods", "center",
                                    "--out", str(out), "--no-progress", "--examples", "0"])
    assert done.returncode == 1, done.stderr[-2000:]  # results written, images skipped
    after = _tree(sandbox, out)
    assert {k for k in after if before.get(k) != after[k] and not k.startswith(MATPLOTLIB_CACHE)} == set()
    assert str(jpeg) in done.stderr and str(xml) in done.stderr
    data = json.loads((out / "results.json").read_text())["config"]["data"]
    assert (data["evaluated"], data["unreadable"]) == (1, 2)
    report = (out / "results.md").read_text()
    assert str(jpeg) in report and str(xml) in report


# ------------------------------------------------------------------------- a user's folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def _explain(image: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(image), "--model", MODEL, "--method", "gradient", "--out", str(out), *extra]


def _evaluate(shared_data: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--dataset", "voc2007", "--root", str(shared_data / "voc2007"), "--methods", "center",
            "--limit", "1", "--out", str(out), "--no-progress", "--examples", "0", *extra]


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_a_non_empty_out_is_left_exactly_as_it_was(command, image, shared_data, tmp_path, capsys):
    """Without --force the folder is refused before anything is written; with --force the user's
    own files survive byte for byte."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (out / "grid-old.png").write_bytes(b"not relprop's")
    before = _contents(out)
    args = _explain(image, out) if command == "explain" else _evaluate(shared_data, out)
    assert main(args) != 0
    assert "--force" in capsys.readouterr().err
    assert _contents(out) == before
    assert main(args + ["--force"]) == 0
    after = _contents(out)
    assert {k: after[k] for k in before} == before


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_an_out_that_is_a_file_is_refused_and_kept(command, image, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file of the user")
    args = _explain(image, out, "--force") if command == "explain" else _evaluate(shared_data, out, "--force")
    assert main(args) != 0
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "a file of the user"


# ------------------------------------------------------------------------- unreadable inputs


def test_explain_reports_an_unreadable_image_and_explains_the_rest(tmp_path, capsys):
    """Issue 7: a corrupt image is reported by its path and the other images are still explained
    (a JPEG cut in half passes PIL's header check, so it only fails once it is decoded)."""
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"{name}.jpg" for name in ("first", "broken", "last")]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path, quality=90)
    paths[1].write_bytes(paths[1].read_bytes()[:600])
    out = tmp_path / "out"
    main(_explain(paths[0], out)[:1] + [str(p) for p in paths] + _explain(paths[0], out)[2:])
    assert str(paths[1]) in capsys.readouterr().err
    written = {p.name for p in out.iterdir()} if out.is_dir() else set()
    assert {"first_gradient.png", "last_gradient.png", "grid.png"} <= written, f"written: {sorted(written)}"


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"not an image"],
                         ids=["truncated JPEG", "corrupt file"])
def test_explain_exits_2_when_no_image_can_be_read(damage, tmp_path, capsys):
    """Issue 16: a single truncated JPEG (which passes the header check) exited 1, a corrupt one 2; both
    mean that nothing could be explained: exit 2, nothing written."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(damage(path.read_bytes()))
    out = tmp_path / "out"
    assert main(_explain(path, out)) == 2
    assert str(path) in capsys.readouterr().err
    assert not out.exists()


def _imagenet_copy(shared_data: Path, root: Path) -> Path:
    source = shared_data / "imagenet"
    (root / "val").mkdir(parents=True)
    for path in sorted((source / "val").glob("*.JPEG"))[:2]:
        shutil.copy(path, root / "val")
    for path in source.glob("*.*"):
        shutil.copy(path, root)
    return root


def _coco_copy(shared_data: Path, root: Path) -> Path:
    shutil.copytree(shared_data / "coco", root, ignore=shutil.ignore_patterns("*.jpg"))
    return root


def _truncate(path: Path) -> Path:
    path.write_text(path.read_text()[:200])
    return path


def _drop_columns(path: Path) -> Path:
    path.write_text("image,label\nILSVRC2012_val_00000001.JPEG,65\n")
    return path


@pytest.mark.parametrize(
    "dataset, copy, annotation, damage",
    [("coco2014", _coco_copy, "annotations/instances_val2014_subset.json", _truncate),
     ("imagenet", _imagenet_copy, "val_boxes.csv", _drop_columns)],
    ids=["coco: cut-off JSON", "imagenet: box file without box columns"],
)
def test_a_corrupt_annotation_file_is_named(dataset, copy, annotation, damage, shared_data, tmp_path):
    """Data-set-wide annotation files that cannot be parsed: a DataError naming the file."""
    root = copy(shared_data, tmp_path / "data")
    broken = damage(root / annotation)
    with pytest.raises(DataError) as info:
        open_dataset(dataset, root)[0]
    assert info.value.path == str(broken)
