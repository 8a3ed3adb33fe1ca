"""Toy training step throughput: 1 vs 2 threads and the OpenMP wait policy, alone and next to a
competing process (a CPU-bound busy loop standing in for another job on the machine).

``python -m pipeline.scripts.bench_threads --seconds 4``: each configuration runs in a fresh process
(OpenMP reads ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` only when torch loads), configurations
interleave, each measurement lasts ``--seconds``. Prints iterations/s. The chosen default lives in
``pipeline/threads.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # label -> environment
    "1 thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""},
    "2 threads, OpenMP default wait (spin)": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""},
    "2 threads, GOMP_SPINCOUNT=1000 (default)": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "",
                                                 "GOMP_SPINCOUNT": "1000"},
}


def child(seconds: float) -> None:
    """Build the toy classifier and run training steps for ``seconds``; print it/s as json."""
    import torch
    import torch.nn.functional as F

    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig
    from models.trainable import select_trainable

    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True, True), adapter_layers=2, fiser_layers=1, image_size=64).train()
    select_trainable(model, "q")
    model.set_label_names([f"class {i}" for i in range(20)])  # FiSeR reads the label sequence
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(8, 3, 64, 64) * 255
    masks = (torch.rand(8, 16, 64, 64) > 0.5).float()
    text = F.normalize(torch.randn(20, model.embed_dim), dim=-1)
    target = torch.randint(0, 20, (8, 16))

    def step() -> None:
        out = model(images, masks, text, fiser_class_sets=[[0, 1, 2]] * 8, class_sets=[[0, 1, 2]] * 8)
        loss = F.cross_entropy(out["logits"].flatten(0, 1), target.flatten()) + out["loss_fiser"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(json.dumps({"it_per_s": n / (time.perf_counter() - t0), "threads": torch.get_num_threads()}))


REPO = Path(__file__).resolve().parents[2]


def measure(env: dict[str, str], seconds: float, compete: bool) -> float:
    """it/s of a fresh child process with ``env`` (an empty value unsets the variable). The child runs this
    file as a script, so ``pipeline/__init__`` (which sets the project's defaults) is not imported."""
    full = {k: v for k, v in os.environ.items() if k not in env}
    full.update({k: v for k, v in env.items() if v})
    full["PYTHONPATH"] = os.pathsep.join([str(REPO), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if compete else None
    try:
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--seconds",
                              str(seconds)], env=full, capture_output=True, text=True, check=True, timeout=300)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(res.stdout.strip().splitlines()[-1])["it_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one measurement")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.seconds)
    print(f"{os.cpu_count()} CPUs; toy training step (tiny CLIP, batch 8, 16 masks); {args.seconds:.0f} s per "
          f"measurement, {args.repeats} repeat(s), configurations interleaved")
    results: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for compete in (False, True):
            for label, env in CONFIGS.items():
                results.setdefault((label, compete), []).append(measure(env, args.seconds, compete))
    for compete in (False, True):
        print("with a competing busy process:" if compete else "alone:")
        for label in CONFIGS:
            v = results[(label, compete)]
            print(f"  {label:<40}: {statistics.median(v):6.2f} it/s  [{min(v):.2f}-{max(v):.2f}]")


if __name__ == "__main__":
    main()
