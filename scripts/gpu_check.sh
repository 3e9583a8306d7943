#!/usr/bin/env bash
# Device check for issue 6 target 4: run on the GPU machine from the repo root (wheels carried in .whl).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/rsp_strategies.py --model resnet50 --batch 64 --device cuda | tee "$OUT/rsp_strategies_resnet50_b64.md"
python3 - <<'PY'
import torch, torchvision, relprop
torch.manual_seed(0)
m = torchvision.models.resnet50().eval()
x = torch.randn(4, 3, 224, 224)
for make in (lambda m: relprop.RSP(m), lambda m: relprop.AE(m)):
    cpu = make(m).attribute(x, target=[1, 2, 3, 4])
    gpu = make(m.cuda()).attribute(x.cuda(), target=[1, 2, 3, 4]).cpu()
    m.cpu()
    print("cuda vs cpu max rel diff", ((gpu - cpu).abs().max() / cpu.abs().max()).item())
PY
python3 - <<'PY'
import os
from pathlib import Path
from relprop.benchmark import run, save
methods = ("forward", "gradient", "rsp", "ae", "lrp_epsilon", "captum_lrp", "zennit_epsilon_plus_flat")
out = Path(os.environ["OUT"])
save(run(models=("resnet50",), batches=(1, 64), methods=methods, device="cuda", repeats=10), out / "resnet50")
PY
timeout 150 python3 - <<'PY'
import os
from pathlib import Path
from relprop.benchmark import run, save
methods = ("forward", "gradient", "rsp", "ae", "lrp_epsilon")
out = Path(os.environ["OUT"])
save(run(models=("vgg16", "densenet121", "efficientnet_lite0"), batches=(1, 16), methods=methods, device="cuda", repeats=5, memory=False), out / "others")
PY
