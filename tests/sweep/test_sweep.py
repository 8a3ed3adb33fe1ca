"""Ablation sweeps: grid validation, a real trial (tiny world), and Ray Tune runs on one local head.

One Ray head per module (`ray start --head --block`, token auth, stopped by its pid afterwards); every
sweep here attaches to it with ``address`` (the `--address` path), so the module pays one Ray start.
Cheap fake trials stand in for training where the test is about the runner."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import override
from pipeline.params_file import load_params
from pipeline.presets import preset_params
from pipeline.sweep.grids import GridError, available_grids, load_grid, trial_params
from pipeline.sweep.runner import SweepOptions, run_sweep
from pipeline.sweep.trial import SharedInputs, generator_key, proposals_for, run_trial

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

GRID = {
    "paper_table": "test", "reference_row": "one",
    "benchmarks": {"toy": ["toy_open"], "paper": ["ade20k_150"]},
    "rows": [
        {"label": "one", "overrides": {"model.adapter_layers": 1}},
        {"label": "two", "overrides": {"model.adapter_layers": 2}},
        {"label": "broken", "overrides": {"model.adapter_layers": 3}},
        {"label": "pending", "overrides": {"train.future_switch": True}, "pending_switches": ["train.future_switch"]},
    ],
}


def _write_grid(path: Path, grid: dict) -> str:
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def _params(data_root: Path, **sweep):
    p = load_params(REPO / "params.yaml")
    return override(p, {"data.root": str(data_root), "sweep.cpus_per_trial": 0.5,
                        **{f"sweep.{k}": v for k, v in sweep.items()}})


# ----------------------------------------------------------------------------- validation (no Ray)
def test_every_packaged_grid_validates_on_both_presets():
    toy = load_params(REPO / "params.yaml")
    paper = preset_params("paper")
    names = available_grids()
    assert {"modules", "other_components", "clip_params", "classifier_backbone", "generator_backbone",
            "adapter_layers", "lora", "teva_parts", "oracle_generator", "iterations", "data_fraction"} <= set(names)
    for name in names:
        for params in (toy, paper):
            grid = load_grid(name, params)
            assert len(grid.rows) >= 2 and grid.reference_row in [r.label for r in grid.rows]
    assert load_grid("modules", paper).base["train.iterations"] == 10000
    labels = [r.label for r in load_grid("clip_params", toy).rows]
    assert labels == ["f_q", "f_k", "f_v", "f_q,f_k", "f_q,f_v", "f_q,f_k,f_v", "MLP", "All"]  # tables.json keys
    rows = {r.label: r for r in load_grid("other_components", toy).rows}
    assert not any(r.blocked for r in rows.values())  # every Table IV(b) row is expressible now
    assert rows["+ tune mask generator"].overrides == {"model.tune_generator": True}


@pytest.mark.parametrize("row, message", [
    ({"label": "x", "overrides": {"model.adaptor_layers": 1}}, "'model.adaptor_layers'"),
    ({"label": "x", "overrides": {"model.adapter_layers": 7}}, "model.adapter_layers: must be in [0, 3]"),
    ({"label": "x", "overrides": {"model.trainable": "qq"}}, "model.trainable"),
    ({"label": "x", "overides": {}}, "unknown key(s) ['overides']"),
    ({"label": "x", "evaluation": {"masks": "perfect"}}, "evaluation.masks='perfect'"),
])
def test_grid_errors_name_the_bad_key_or_value(tmp_path, row, message):
    path = _write_grid(tmp_path / "bad.yaml", {**GRID, "rows": [GRID["rows"][0], row]})
    with pytest.raises(GridError) as err:
        load_grid(path, load_params(REPO / "params.yaml"))
    assert message in str(err.value) and "'x'" in str(err.value)


def test_experiment_name_follows_the_code_not_the_commit(tmp_path, toy_root, monkeypatch):
    """An uncommitted code edit must start a new experiment (else a re-run restores the old finished trials and
    reports them as the new code's); a commit that touches no code (a README edit) must not orphan the trials."""
    from pipeline import tracking
    from pipeline.sweep import grids

    params = _params(toy_root)
    grid = load_grid(_write_grid(tmp_path / "test.yaml", GRID), params)
    name = grids.experiment_name(grid, params, (0, 1))
    monkeypatch.setattr(tracking, "git_commit", lambda: "another-commit")
    assert grids.experiment_name(grid, params, (0, 1)) == name
    monkeypatch.setattr(grids, "code_digest", lambda: "edited")
    assert grids.experiment_name(grid, params, (0, 1)) != name


def test_code_digest_sees_uncommitted_source_edits_only(tmp_path, monkeypatch):
    from pipeline import tracking

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "model.py").write_text("WIDTH = 64\n")
    monkeypatch.setattr(tracking, "REPO_ROOT", tmp_path)
    first = tracking.code_digest(("pkg",))
    (pkg / "README.md").write_text("docs")  # not code
    assert tracking.code_digest(("pkg",)) == first
    (pkg / "sub" / "model.py").write_text("WIDTH = 96\n")
    assert tracking.code_digest(("pkg",)) != first
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        tracking.code_digest(("no_such_folder",))


def test_code_digest_hashes_what_the_sweep_stage_declares():
    from dvcyaml import stages

    deps = set(stages()["sweep@modules"]["deps"])
    from pipeline.tracking import code_digest

    assert code_digest.__defaults__[0] and set(code_digest.__defaults__[0]) <= deps


def test_unknown_grid_name_lists_the_available_ones(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["sweep", "no_such_grid", "--params", str(REPO / "params.yaml")])
    err = capsys.readouterr().err
    assert "no_such_grid" in err and "modules" in err


def test_changed_generator_gets_its_own_cached_proposals(tmp_path, monkeypatch):
    import pipeline.sweep.trial as sweep

    calls = []

    def fake_compute(params, bench, backbones, out, generator_dir=""):
        calls.append((params.proposals.max_proposals, bench))
        out.mkdir(parents=True)
        (out / "meta.json").write_text("{}")

    monkeypatch.setattr(sweep, "_compute_proposals", fake_compute)
    base = load_params(REPO / "params.yaml")
    shared = SharedInputs("bb", str(tmp_path / "props"), str(tmp_path / "cache"), sweep.generator_key(base))
    assert proposals_for(base, "toy_open", shared) == tmp_path / "props" / "toy_open"
    other = trial_params(base, {"proposals.max_proposals": 8})
    first = proposals_for(other, "toy_open", shared)
    assert proposals_for(other, "toy_open", shared) == first and first.parent.parent == tmp_path / "cache"
    assert calls == [(8, "toy_open")]  # computed once, then reused


# ----------------------------------------------------------------------------- a real trial (no Ray)
@pytest.fixture(scope="module")
def tiny_inputs(toy_root, tmp_path_factory):
    """Backbones dir with a random tiny CLIP, and ground-truth masks stored as the cached proposals."""
    import torch

    from models.clip_backbone import build_clip
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.proposal_store import ProposalWriter
    from pipeline.data.registry import get_benchmark

    root = tmp_path_factory.mktemp("sweep_inputs")
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    (root / "backbones").mkdir()
    torch.save(clip.state_dict(), root / "backbones" / "clip.pt")
    for bench in ("toy_train", "toy_open"):
        ds = BenchmarkDataset(get_benchmark(bench), toy_root)
        with ProposalWriter(root / "proposals" / bench, meta={"generator": "gt"}) as w:
            for i in range(len(ds)):
                s = ds[i]
                masks, _ = s.segment_masks()
                w.add(s.image_id, masks, np.ones(len(masks), np.float32))
    return root


TINY = {"train.iterations": 2, "train.batch_size": 2, "train.checkpoint_every": 1, "train.warmup_iters": 0,
        "evaluate.max_images": 3}


def test_real_trial_trains_evaluates_and_resumes_from_its_own_dir(tiny_inputs, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the text-embedding cache resolves here, as in a trial
    params = _params(toy_root)
    shared = SharedInputs(str(tiny_inputs / "backbones"), str(tiny_inputs / "proposals"), str(tmp_path / "cache"),
                          generator_key(params))
    trial_dir = tmp_path / "trials" / "row__seed0"
    with ThreadPoolExecutor(1) as pool:  # Ray Tune runs a function trial outside the main thread
        metrics = pool.submit(run_trial, params, {**TINY, "seed": 0}, trial_dir, shared,
                              benchmarks=["toy_open"]).result()
    assert {"toy_open/PQ", "toy_open/mIoU", "toy_open/PQ_unseen", "toy_open/mIoU_unseen", "train/loss"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["train/resumed_from"] == 0
    assert (trial_dir / "checkpoints" / "last.pt").is_file() and (trial_dir / "last.pt").is_file()
    assert json.loads((trial_dir / "metrics.json").read_text())["toy_open/PQ"] == pytest.approx(metrics["toy_open/PQ"])
    again = run_trial(params, {**TINY, "seed": 0}, trial_dir, shared, benchmarks=["toy_open"])
    assert again["train/resumed_from"] == 2  # the checkpoint in the trial dir: no step re-run
    assert again["toy_open/PQ"] == pytest.approx(metrics["toy_open/PQ"])
    untrained = run_trial(params, {**TINY, "seed": 0}, tmp_path / "trials" / "u", shared, benchmarks=["toy_open"],
                          evaluation={"classifier": "untrained", "masks": "oracle"})
    assert "train/loss" not in untrained and not (tmp_path / "trials" / "u" / "checkpoints").exists()


# ----------------------------------------------------------------------------- Ray Tune
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray head (2 CPUs) with its own auth token; yields its address; stopped by pid afterwards."""
    log_path = tmp_path_factory.mktemp("ray_head") / "head.log"
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    mp = pytest.MonkeyPatch()
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "TUNE_GLOBAL_CHECKPOINT_S"):
        mp.setenv(k, env[k])
    _reset_ray_token_cache()  # a Ray used earlier in this process (a local ray.init) cached another token
    with log_path.open("w") as log:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                                 str(port), "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None and time.time() < deadline, f"ray head did not start: {log_path.read_text()}"
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        mp.undo()
        _reset_ray_token_cache()


def _reset_ray_token_cache() -> None:
    """Ray's driver reads its auth token once per process (``$RAY_AUTH_TOKEN``, else ``~/.ray/auth_token``)."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def _fake_trial(params, overrides, trial_dir, shared, *, benchmarks, evaluation):
    p = trial_params(params, overrides)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / f"run-{time.time_ns()}").touch()
    if p.model.adapter_layers == 3 and p.seed == 1:
        raise ValueError("boom: adapter_layers=3")
    if p.model.adapter_layers == 2:
        time.sleep(0.5)  # a measurable duration for the MLflow child runs
    return {**{f"{b}/PQ": 10.0 * p.model.adapter_layers + p.seed for b in benchmarks}, "train/loss": 0.5}


@pytest.fixture(scope="module")
def fake_sweep(ray_head, toy_root, tmp_path_factory):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test module
    root = tmp_path_factory.mktemp("fake_sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    opts = SweepOptions(out=root / "out", storage=root / "ray", metrics=root / "metrics" / "test.json",
                        backbones=root, proposals_root=root, address=ray_head["address"], seeds=(0, 1),
                        tracking_uri=uri, trial_fn=_fake_trial, verbose=0)
    t0 = time.perf_counter()
    summary = run_sweep(_write_grid(root / "test.yaml", GRID), _params(toy_root, max_failures=1), opts)
    return {"summary": summary, "root": root, "uri": uri, "opts": opts, "seconds": time.perf_counter() - t0}


def test_grid_finishes_and_writes_results_json(fake_sweep):
    data = json.loads(fake_sweep["opts"].metrics.read_text())
    assert data["grid"] == "test" and data["seeds"] == [0, 1]
    rows = {r["label"]: r for r in data["rows"]}
    assert list(rows) == ["one", "two", "broken", "pending"]
    assert rows["one"]["n"] == 2 and rows["one"]["values"]["toy_open/PQ"] == [10.0, 11.0]
    assert rows["one"]["mean"]["toy_open/PQ"] == pytest.approx(10.5)
    assert rows["one"]["std"]["toy_open/PQ"] == pytest.approx(0.5 ** 0.5)
    assert rows["two"]["mean"]["toy_open/PQ"] == pytest.approx(20.5) and rows["two"]["failures"] == []
    assert rows["one"]["overrides"] == {"model.adapter_layers": 1} and data["wall_seconds"] > 0


def test_raising_trial_is_retried_then_reported_while_others_finish(fake_sweep):
    data = fake_sweep["summary"]
    rows = {r["label"]: r for r in data["rows"]}
    assert data["failed_trials"] == 3  # broken seed 1, and the pending row's two seeds
    assert rows["broken"]["n"] == 1 and rows["broken"]["values"]["toy_open/PQ"] == [30.0]
    assert [f["seed"] for f in rows["broken"]["failures"]] == [1]
    assert "boom: adapter_layers=3" in rows["broken"]["failures"][0]["error"]
    runs = list((fake_sweep["root"] / "out").glob("test-toy-*/broken__seed1/run-*"))
    assert len(runs) == 2  # first attempt + one retry (max_failures=1)
    assert rows["pending"]["n"] == 0 and len(rows["pending"]["failures"]) == 2
    assert all("train.future_switch" in f["error"] for f in rows["pending"]["failures"])


def test_mlflow_has_one_parent_with_nested_children(fake_sweep):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(fake_sweep["uri"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("fovseg-toy")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(parents) == 1 and parents[0].data.tags["grid"] == "test" and parents[0].data.tags["git_commit"]
    rows = {r.data.tags["row"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")}
    assert set(rows) == {"one", "two", "broken", "pending"}  # one run per grid row under the sweep
    assert rows["one"].data.metrics["toy_open/PQ"] == 10.5 and rows["two"].data.metrics["toy_open/PQ_delta"] == 10.0
    children = [c for r in rows.values() for c in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'")]
    assert len(children) == 8 and all(c.data.tags["kind"] == "sweep_trial" for c in children)
    one = next(c for c in children if c.data.tags["trial"] == "one__seed1")
    assert one.data.metrics["toy_open/PQ"] == 11.0 and one.data.params["override.model.adapter_layers"] == "1"
    assert one.data.tags["mlflow.parentRunId"] == rows["one"].info.run_id
    assert sum(c.info.status == "FAILED" for c in children) == 3
    # each child spans its trial's own time (not the moment it was logged), inside the parent's span
    two = next(c for c in children if c.data.tags["trial"] == "two__seed0")
    assert 500 <= two.info.end_time - two.info.start_time < 30_000
    assert all(c.info.start_time >= parents[0].info.start_time for c in children if c.info.status == "FINISHED")
    # logging again (a resumed sweep) adds no duplicates
    from pipeline.sweep.mlflow_mirror import log_sweep_to_mlflow

    grid = load_grid(str(fake_sweep["root"] / "test.yaml"), load_params(REPO / "params.yaml"))
    name = parents[0].data.tags["sweep_key"]
    log_sweep_to_mlflow(grid, load_params(REPO / "params.yaml"), [], name, fake_sweep["uri"])
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")) == 1


def test_rerun_after_a_code_edit_runs_the_trials_again(ray_head, toy_root, tmp_path, monkeypatch):
    """DVC re-runs ``sweep@<grid>`` after a code change (its output persists, for resuming): the finished
    trials of the old code must not be restored as the new code's results."""
    from ray import cloudpickle

    from pipeline.sweep import grids

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    grid = _write_grid(tmp_path / "test.yaml", {**GRID, "rows": GRID["rows"][:1]})
    opts = SweepOptions(out=tmp_path / "out", storage=tmp_path / "ray", metrics=tmp_path / "result.json",
                        backbones=tmp_path, proposals_root=tmp_path, address=ray_head["address"], seeds=(0,),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", trial_fn=_fake_trial, verbose=0)
    run_sweep(grid, _params(toy_root), opts)
    first = json.loads(opts.metrics.read_text())["experiment"]
    monkeypatch.setattr(grids, "code_digest", lambda: "edited")  # as an uncommitted edit of models/ would
    run_sweep(grid, _params(toy_root), opts)
    second = json.loads(opts.metrics.read_text())
    assert second["experiment"] != first and second["rows"][0]["n"] == 1
    assert len(list((opts.out / second["experiment"]).glob("one__seed0/run-*"))) == 1  # trained again, anew
    assert len(list((opts.out / first).glob("one__seed0/run-*"))) == 1


DRIVER = """
import sys, time, dataclasses
from pathlib import Path
from pipeline.params_file import load_params
from pipeline.sweep.grids import trial_params
from pipeline.sweep.runner import SweepOptions, run_sweep

root, address = Path(sys.argv[1]), sys.argv[2]

def trial(params, overrides, trial_dir, shared, *, benchmarks, evaluation):
    p = trial_params(params, overrides)
    trial_dir.mkdir(parents=True, exist_ok=True)
    earlier = len(list(trial_dir.glob("run-*")))
    (trial_dir / f"run-{time.time_ns()}").touch()
    if p.model.adapter_layers == 2 and not (root / "release").exists():
        time.sleep(600)
    return {"toy_open/PQ": float(p.model.adapter_layers), "toy_open/earlier_runs": float(earlier)}

params = load_params(root / "params.yaml")
run_sweep(str(root / "grid.yaml"), params, SweepOptions(out=root / "out", storage=root / "ray",
          metrics=root / "result.json", backbones=root, proposals_root=root, address=address, seeds=(0,),
          tracking_uri=f"sqlite:///{root / 'mlflow.db'}", trial_fn=trial, verbose=0))
"""


@pytest.mark.slow  # two driver processes, about 50 s
def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_head, toy_root, tmp_path):
    grid = {**GRID, "rows": GRID["rows"][:2]}
    _write_grid(tmp_path / "grid.yaml", grid)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["root"] = str(toy_root)
    params["sweep"].update(cpus_per_trial=0.5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**ray_head["env"], "PYTHONPATH": str(REPO)}
    trials = tmp_path / "out"

    def start():
        return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path), ray_head["address"]],
                                cwd=REPO, env=env, stdout=(tmp_path / "driver.log").open("a"), stderr=subprocess.STDOUT)

    driver = start()
    deadline = time.time() + 240
    finished = tmp_path / "ray"
    while not (list(trials.glob("*/two__seed0/run-*")) and any(
            '"toy_open/PQ"' in p.read_text() for p in finished.glob("*/one__seed0/result.json"))):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "the first trial did not finish in time"
        time.sleep(0.5)
    time.sleep(4)  # let Tune write its experiment state (TUNE_GLOBAL_CHECKPOINT_S=1)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    assert not (tmp_path / "result.json").exists()
    assert _trial_runs(tmp_path / "mlflow.db") == ["one__seed0"]  # logged as it finished, before the kill
    (tmp_path / "release").touch()
    rerun = start()
    assert rerun.wait(240) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(list(trials.glob("*/one__seed0/run-*"))) == 1  # finished before the kill: not run again
    assert len(list(trials.glob("*/two__seed0/run-*"))) == 2  # interrupted: run again in the same trial dir
    rows = {r["label"]: r for r in json.loads((tmp_path / "result.json").read_text())["rows"]}
    assert rows["one"]["n"] == rows["two"]["n"] == 1
    assert rows["two"]["values"]["toy_open/earlier_runs"] == [1.0]  # it found its interrupted attempt's files
    assert _trial_runs(tmp_path / "mlflow.db") == ["one__seed0", "two__seed0"]  # the restored run: no duplicate


def _trial_runs(db: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("fovseg-toy")
    return sorted(r.data.tags["trial"] for r in client.search_runs([exp.experiment_id], "tags.kind = 'sweep_trial'"))


@pytest.mark.slow
def test_real_two_row_two_seed_grid_on_ray(ray_head, tiny_inputs, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = {**GRID, "rows": [{"label": "0", "overrides": {"model.adapter_layers": 0}},
                             {"label": "2", "overrides": {"model.adapter_layers": 2}}],
            "base": {"toy": TINY}, "reference_row": "2"}
    opts = SweepOptions(out=tmp_path / "out", storage=tmp_path / "ray", metrics=tmp_path / "real.json",
                        backbones=tiny_inputs / "backbones", proposals_root=tiny_inputs / "proposals",
                        address=ray_head["address"], seeds=(0, 1), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                        verbose=0)
    t0 = time.perf_counter()
    summary = run_sweep(_write_grid(tmp_path / "real.yaml", grid), _params(toy_root, cpus_per_trial=1.0), opts)
    print(f"\nreal 2-row x 2-seed tiny grid: {time.perf_counter() - t0:.1f} s wall")
    assert summary["failed_trials"] == 0 and [r["n"] for r in summary["rows"]] == [2, 2]
    assert all(np.isfinite(v) for r in summary["rows"] for v in r["values"]["toy_open/PQ"])
    assert len(list((tmp_path / "out").glob("real-toy-*/2__seed1/checkpoints/last.pt"))) == 1


def test_data_fraction_is_a_fixed_nested_subset(toy_root):
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.registry import get_benchmark
    from pipeline.train.data import TrainSet, training_subset

    assert training_subset(10, 1.0) == list(range(10))
    small, large = training_subset(1000, 0.01), training_subset(1000, 0.2)
    assert len(small) == 10 and len(large) == 200 and set(small) <= set(large)
    assert training_subset(1000, 0.01) == small  # the same images for every seed and run
    assert len(training_subset(5, 0.001)) == 1
    ts = TrainSet(BenchmarkDataset(get_benchmark("toy_train"), toy_root), None, 64, 0.5, 1.5, "gt", 12,
                  image_size=64, grid=32, data_fraction=0.5)
    assert len(ts) == 6 and ts.load(0, np.random.default_rng(0))["image"].shape[-1] == 64
    with pytest.raises(GridError, match="train.data_fraction"):
        trial_params(load_params(REPO / "params.yaml"), {"train.data_fraction": 0.0})


def test_rows_without_teva_run_without_the_adapter_and_agree_with_the_maskclip_row():
    """The adapter belongs to TeVA (Sec. IV): Table IV(a)/(i) baselines and the FiSeR rows without TeVA use
    MaskCLIP's binary mask attention, the architecture of Table IV(j)'s MaskCLIP row."""
    params = load_params(REPO / "params.yaml")

    def model(grid, label):
        g = load_grid(grid, params)
        row = next(r for r in g.rows if r.label == label)
        return trial_params(params, {**g.base, **row.overrides}).model

    maskclip = model("oracle_generator", "MaskCLIP")
    for grid, label in (("modules", "baseline (f_q tuned, frozen generator)"), ("modules", "+ FiSeR"),
                        ("teva_parts", "baseline"), ("fiser_candidates", "baseline (no FiSeR)"),
                        ("fiser_candidates", "+ FiSeR (image's classes, eq. 6)")):
        m = model(grid, label)
        assert (m.teva.target_attention, m.adapter_layers) == (False, 0), (grid, label)
        assert (m.teva, m.adapter_layers, m.trainable) == (maskclip.teva, maskclip.adapter_layers, maskclip.trainable)
    assert model("modules", "+ TeVA").adapter_layers == 2 and model("teva_parts", "+ mask-image x-att").adapter_layers


# ----------------------------------------------------------------------------- a second node (cluster)
@pytest.fixture(scope="module")
def ray_second_node(ray_head, tmp_path_factory):
    """A second Ray node joined to ``ray_head``, started from another folder without the repository on its
    PYTHONPATH and with its own mount of the shared root (``FOVSEG_SHARED_ROOT``: a symlink to it). Stopped by
    its pid (not `ray stop`, which would stop every Ray instance of this user on the machine)."""
    shared = tmp_path_factory.mktemp("shared_root")
    alias = tmp_path_factory.mktemp("mounts") / "shared"
    alias.symlink_to(shared)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in ray_head["env"].items() if k != "PYTHONPATH"}
    env["FOVSEG_SHARED_ROOT"] = str(alias)
    log_path = elsewhere / "node.log"
    with log_path.open("w") as log:
        node = subprocess.Popen([str(RAY), "start", "--block", "--address", ray_head["address"], "--node-ip-address",
                                 "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"], cwd=elsewhere, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log_path.read_text():
            assert node.poll() is None and time.time() < deadline, f"ray node did not start: {log_path.read_text()}"
            time.sleep(0.5)
        yield {"root": shared, "alias": alias}
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)


def _where_trial(params, overrides, trial_dir, shared, *, benchmarks, evaluation):
    """Records where it ran: node, cwd, the trial folder it was given and the code it imported."""
    import ray

    import pipeline.tracking

    p = trial_params(params, overrides)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "where.json").write_text(json.dumps({
        "node": ray.get_runtime_context().get_node_id(), "cwd": os.getcwd(), "trial_dir": str(trial_dir),
        "backbones": shared.backbones, "data_root": str(p.data.root), "code": pipeline.tracking.__file__}))
    time.sleep(3)  # three trials at once: every node gets one
    return {f"{b}/PQ": 10.0 * p.model.adapter_layers + p.seed for b in benchmarks}


def test_cluster_nodes_get_the_code_shipped_and_paths_under_their_shared_root(ray_head, ray_second_node, toy_root,
                                                                              monkeypatch):
    """Two nodes (the head with 2 CPUs, a second one with 1 CPU started elsewhere, its shared root mounted at
    another path): every trial finishes, the code comes from the job's working_dir copy (not the repository),
    each node resolves the trial folders and inputs under its own mount, and each trial's MLflow run is written
    by the driver as the trial ends, before the sweep's summary."""
    from mlflow import MlflowClient
    from ray import cloudpickle

    from pipeline.sweep.mlflow_mirror import SweepTracking

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root, alias = ray_second_node["root"], ray_second_node["alias"]
    data = root / "datasets"
    data.symlink_to(toy_root)  # the dataset root under the shared root: it travels as "datasets"
    monkeypatch.chdir(root)
    calls = []
    log_trial, finish = SweepTracking.log_trial, SweepTracking.finish
    monkeypatch.setattr(SweepTracking, "log_trial",
                        lambda self, t: (calls.append(t["name"]), log_trial(self, t)))
    monkeypatch.setattr(SweepTracking, "finish", lambda self, *a: (calls.append("finish"), finish(self, *a)))
    grid = {**GRID, "rows": GRID["rows"][:2]}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    opts = SweepOptions(out=root / "out", storage=root / "ray", metrics=root / "m.json", backbones=root / "bb",
                        proposals_root=root / "props", address=ray_head["address"], seeds=(0, 1),
                        tracking_uri=uri, trial_fn=_where_trial, verbose=0, shared_root=root)
    params = override(_params(data), {"sweep.cpus_per_trial": 1.0, "data.root": "datasets"})
    summary = run_sweep(_write_grid(root / "grid.yaml", grid), params, opts)
    assert summary["failed_trials"] == 0 and [r["n"] for r in summary["rows"]] == [2, 2]
    where = [json.loads(p.read_text()) for p in (root / "out").glob("*/*/where.json")]
    assert len(where) == 4 and len({w["node"] for w in where}) == 2, where  # both nodes ran trials
    on_alias = [w for w in where if w["trial_dir"].startswith(str(alias))]
    assert on_alias and {w["node"] for w in on_alias} != {w["node"] for w in where}, where
    for w in where:
        mount = alias if w in on_alias else root
        assert Path(w["cwd"]) == root and w["backbones"] == str(mount / "bb")  # cwd: the mount, symlinks resolved
        assert w["data_root"] == str(mount / "datasets")
        assert not w["code"].startswith(str(REPO)) and "runtime_resources" in w["code"], w  # the shipped copy
    # MLflow: each trial's run, logged as it ended (before the summary), under its row
    assert calls.index("finish") >= 4 and set(calls[:4]) == {f"{r}__seed{s}" for r in ("one", "two") for s in (0, 1)}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'sweep_trial'")
    assert sorted(r.data.tags["trial"] for r in runs) == ["one__seed0", "one__seed1", "two__seed0", "two__seed1"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["toy_open/PQ"] >= 10 for r in runs)
