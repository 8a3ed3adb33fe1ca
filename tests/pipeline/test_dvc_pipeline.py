"""`dvc status` in a temporary git repo: a training knob touches train/evaluate/benchmark only."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def _placeholder_outputs(root: Path, params: dict) -> None:
    benches = params["data"]["eval_benchmarks"]
    files = ["outputs/datasets.json", "outputs/backbones/clip.pt", "metrics/backbones.json",
             f"outputs/proposals/{params['data']['train_benchmark']}/index.json",
             f"metrics/proposals/{params['data']['train_benchmark']}.json", "outputs/train/model.pt",
             "outputs/checkpoints/last.pt", "metrics/train.json", "metrics/train_curve.csv", "metrics/benchmark.json",
             "reports/README.md", "outputs/attention/index.json"]
    for b in benches:
        files += [f"outputs/proposals/{b}/index.json", f"metrics/proposals/{b}.json",
                  f"outputs/eval/{b}/predictions.json", f"metrics/eval/{b}.json"]
    for f in files:
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("step,loss\n1,1\n" if f.endswith(".csv") else json.dumps({"placeholder": f}))


def test_training_knob_reruns_only_downstream_stages(tmp_path):
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    for d in ("pipeline", "models", "stages"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], tmp_path)
    _run(DVC + ["init", "-q"], tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    _placeholder_outputs(tmp_path, params)
    _run(DVC + ["commit", "-f", "-q"], tmp_path)
    assert json.loads(_run(DVC + ["status", "--json"], tmp_path) or "{}") == {}

    params["train"]["lr"] = params["train"]["lr"] / 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run(DVC + ["status", "--json"], tmp_path)))
    benches = params["data"]["eval_benchmarks"]
    assert changed == {"train"}, changed  # direct change; downstream stages follow once train's outputs change

    # what `dvc repro` would run: train, then everything that consumes its outputs
    dry = _run(DVC + ["repro", "--dry", "--force-downstream"], tmp_path)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "benchmark", "attention", "report", *(f"evaluate@{b}" for b in benches)}, ran
    assert not {"download", "backbones", "proposals-train"} & ran and not any(s.startswith("proposals@") for s in ran)


def test_paper_preset_plan_on_a_fresh_clone(tmp_path):
    """`dvc repro --dry -f` lists every stage of the paper preset without running or failing (plain `--dry`
    trips over DVC issue #9818 on a fresh clone: its run-cache lookup hashes not-yet-produced dependencies)."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    for d in ("pipeline", "models", "stages"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pipeline" / "presets" / "paper.yaml", tmp_path / "params.yaml")
    _run(["git", "init", "-q"], tmp_path)
    _run(DVC + ["init", "-q"], tmp_path)
    dry = _run(DVC + ["repro", "--dry", "-f"], tmp_path)
    ran = [line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")]
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert ran[0] == "download" and ran[-1] == "report"
    assert {"train", "proposals-train", *(f"evaluate@{b}" for b in params["data"]["eval_benchmarks"])} <= set(ran)
    assert "--benchmark ade20k_150" in dry and not (tmp_path / "outputs").exists()  # planned, nothing ran


def test_offline_plots_template_inlines_vega_and_no_cdn(tmp_path):
    from pipeline.scripts.offline_plots import main

    out = tmp_path / "offline.html"
    main(["--out", str(out)])
    html = out.read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html  # DVC adds no CDN <script> tags
    assert "window.vegaEmbed" in html and "cdn.jsdelivr" not in html and "https://cdn" not in html
    head = html[:html.index("{plot_divs}")]
    assert head.count("<script") == 1 and "</script" not in head[head.index("<script") + 7:-200].replace(
        "<\\/script", "")
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = [next(iter(p)) if isinstance(p, dict) else p for p in dvc_yaml["plots"]]
    assert declared == ["loss_terms", "reports/figures"]  # each plot once; the report's PNGs as image plots
    assert not any("plots" in st for st in dvc_yaml["stages"].values())
