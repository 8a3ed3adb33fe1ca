"""dvc.yaml is the single source of paths and code dependencies.

- every project module a stage imports (its import closure, lazy imports included) and every packaged data
  file those modules read is covered by the stage's deps;
- every path a stage command passes is a declared dep or output, and the stage's parser has no default for it;
- `dvc status` in a temporary git repo: a training knob, or a change to the classifier's code, touches
  train/evaluate/benchmark only (never the backbones or proposals).
"""
import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvcyaml import REPO, command, stages

from pipeline.presets import render_params

DVC = [sys.executable, "-m", "dvc"]
PROJECT = ("models", "pipeline", "stages")
# packaged data files read at run time: `resources.files("pipeline") / "x"` and `Path(__file__).parent / "x"`
_RESOURCE = re.compile(r'resources\.files\("pipeline"\)\s*/\s*"([^"]+)"')
_BESIDE = re.compile(r'Path\(__file__\)\.parent\s*/\s*"([^"]+)"')


def _module_file(name: str, root: Path) -> Path | None:
    p = root / Path(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def import_closure(module: str, root: Path = REPO) -> set[str]:
    """Repo-relative files of the project modules ``module`` imports, transitively, plus the packaged data
    files they read."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name, root)
        if name in seen or path is None:
            continue
        seen.add(name)
        rel = path.relative_to(root)
        files.add(str(rel))
        text = path.read_text()
        files.update(f"pipeline/{m}" for m in _RESOURCE.findall(text))
        files.update(str(rel.parent / m) for m in _BESIDE.findall(text))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in PROJECT]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in PROJECT:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return files


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    return sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def paths(entries: list | None) -> list[str]:
    return list(entries or [])


ALL = stages()


@pytest.mark.parametrize("name", sorted(ALL))
def test_stage_deps_cover_its_import_closure(name):
    module, _ = command(ALL[name])
    closure = import_closure(module)
    assert f"{module.replace('.', '/')}.py" in closure
    missing = uncovered(closure, paths(ALL[name].get("deps")))
    assert not missing, f"stage {name} imports or reads {missing} but dvc.yaml does not list them in its deps"


def test_the_closure_check_fails_when_a_dep_is_removed():
    deps = paths(ALL["train"]["deps"])
    closure = import_closure("stages.train")
    assert not uncovered(closure, deps)
    assert "pipeline/data/loaders.py" in uncovered(closure, [d for d in deps if d != "pipeline/data"])
    vocab = "pipeline/data/vocabularies/coco_panoptic.json"
    assert vocab in uncovered(closure | {vocab}, [d for d in deps if d != "pipeline/data"])


@pytest.mark.parametrize("name", sorted(ALL))
def test_stage_paths_are_declared_and_have_no_parser_default(name):
    stage = ALL[name]
    module, argv = command(stage)
    declared = set(paths(stage.get("deps"))) | set(paths(stage.get("outs")))
    parser = importlib.import_module(module).build_parser()
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    flags = [a for a in argv if a.startswith("--")]
    for flag in flags:
        value = argv[argv.index(flag) + 1]
        if flag in ("--benchmark", "--downsample"):  # not paths
            continue
        # a declared path, a file inside a declared folder, or a folder whose declared contents are listed
        assert value in declared or uncovered({value}, list(declared)) == [] \
            or any(d.startswith(value.rstrip("/") + "/") for d in declared), \
            f"{name}: {flag} {value} is neither a dep nor an output in dvc.yaml"
        assert actions[flag].required, f"{module}: {flag} has a default that would repeat dvc.yaml"
    outputs = set(paths(stage.get("outs")))
    assert outputs <= {argv[argv.index(f) + 1] for f in flags}, f"{name}: an output is not passed to the stage"


@pytest.mark.parametrize("name", sorted(ALL))
def test_stage_parser_accepts_what_dvc_yaml_passes(name):
    """Every flag a stage's parser requires is in its dvc.yaml command, and nothing it does not know."""
    module, argv = command(ALL[name])
    importlib.import_module(module).build_parser().parse_args(argv)  # SystemExit(2) on a missing/unknown flag


def _run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def _placeholder_outputs(root: Path, all_stages: dict) -> None:
    """One small file per declared output (a file inside directory outputs)."""
    for stage in all_stages.values():
        for out in paths(stage.get("outs")):
            p = root / out
            if not p.suffix:
                p = p / "placeholder.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("step,loss\n1,1\n" if p.suffix == ".csv" else json.dumps({"placeholder": out}))


def _project_with_every_output(root: Path) -> None:
    """A copy of the project under git and DVC in ``root``, every stage's outputs present and committed to DVC."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for d in PROJECT:
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], root)
    _run(DVC + ["init", "-q"], root)
    _placeholder_outputs(root, ALL)
    _run(DVC + ["commit", "-f", "-q"], root)


def test_training_knob_reruns_only_downstream_stages(tmp_path):
    _project_with_every_output(tmp_path)
    params = _params()
    assert json.loads(_run(DVC + ["status", "--json"], tmp_path) or "{}") == {}

    params["train"]["lr"] = params["train"]["lr"] / 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run(DVC + ["status", "--json"], tmp_path)))
    benches = params["data"]["eval_benchmarks"]
    sweeps = {f"sweep@{g}" for g in params["sweep"]["grids"]}  # a sweep trains from the same train params
    # direct change (validate reads every key; its output never changes); downstream stages follow train's outputs
    assert changed == {"validate", "train", *sweeps}, changed

    # what `dvc repro` would run after validate: train, then everything that consumes its outputs
    dry = _run(DVC + ["repro", "--dry", "--force-downstream", "--downstream", "train"], tmp_path)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "benchmark", "attention", "report", *(f"evaluate@{b}" for b in benches)}, ran
    assert not {"download", "backbones", "proposals-train"} & ran and not any(s.startswith("proposals@") for s in ran)

    # a change to the classifier's code (here FiSeR) re-runs training, never the backbones or proposals
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with open(tmp_path / "models" / "fiser.py", "a") as fh:
        fh.write("\n# edited\n")
    changed = set(json.loads(_run(DVC + ["status", "--json"], tmp_path)))
    assert "train" in changed and not {"download", "backbones", "proposals-train"} & changed, changed
    assert not any(s.startswith("proposals@") for s in changed), changed


def test_paper_preset_plan_on_a_fresh_clone(tmp_path):
    """`dvc repro --dry -f` lists every stage of the paper preset without running or failing (plain `--dry`
    trips over DVC issue #9818 on a fresh clone: its run-cache lookup hashes not-yet-produced dependencies)."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    for d in ("pipeline", "models", "stages"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "params.yaml").write_text(render_params("paper"))
    _run(["git", "init", "-q"], tmp_path)
    _run(DVC + ["init", "-q"], tmp_path)
    dry = _run(DVC + ["repro", "--dry", "-f"], tmp_path)
    ran = [line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")]
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert ran[:2] == ["validate", "download"] and ran[-1] == "report"
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
    # each plot once; the report's PNGs as image plots
    assert declared == ["loss_terms", "eval_curve", "reports/figures"]
    assert not any("plots" in st for st in dvc_yaml["stages"].values())


def test_fovseg_predict_finds_the_pipeline_outputs_through_dvc_yaml(tmp_path, monkeypatch):
    import argparse

    from dvcyaml import argument

    from pipeline.errors import FovsegError
    from pipeline.outputs import model_paths

    args = argparse.Namespace(backbones=None, checkpoint=None, zero_shot=False)
    monkeypatch.chdir(REPO)
    model_paths(args)
    assert args.backbones == argument(ALL["backbones"], "--out")
    assert args.checkpoint == f"{argument(ALL['train'], '--out')}/last.pt"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FovsegError, match="no dvc.yaml here"):
        model_paths(argparse.Namespace(backbones=None, checkpoint=None, zero_shot=False))


def test_a_bad_value_from_dvc_exp_run_stops_before_any_output_is_removed(tmp_path):
    """`dvc exp run -S train.lr=-1`: the validate stage fails first; every earlier output and metric stays."""
    _project_with_every_output(tmp_path)
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "runs"], tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.parts[len(tmp_path.parts)] in
              ("outputs", "metrics", "reports")}
    assert len(before) > 10
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    out = subprocess.run(DVC + ["exp", "run", "-S", "train.lr=-1"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode != 0
    assert "train.lr" in out.stderr + out.stdout and "'validate'" in out.stderr + out.stdout
    stamp = tmp_path / "outputs/params.valid"  # the validate stage's own (constant) output
    after = {p: p.read_bytes() for p in before if p.is_file() and p != stamp}
    assert after == {p: b for p, b in before.items() if p != stamp}  # nothing removed, nothing rewritten
