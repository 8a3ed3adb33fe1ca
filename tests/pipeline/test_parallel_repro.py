"""pipeline.parallel_repro: the lanes drawn from a graph and from the real dvc.yaml, and tiny DVC projects run
through it (both lanes really at once, the main one on its CPUs, the side one at a lower priority on all;
every stage once; a failing lane)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

from pipeline import parallel_repro
from pipeline.config import load_params
from pipeline.runtime import REPO_ROOT
from pipeline.threads import available_cpus

two_cpus = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or available_cpus() < 2,
                              reason="lanes need CPU affinity and two CPUs (else parallel_repro is one dvc repro)")


@dataclass(frozen=True)
class FakeStage:
    addressing: str


def fake_graph(edges: dict[str, list[str]]) -> nx.DiGraph:
    """DVC's layout: an edge from each stage to each stage it depends on."""
    nodes = {n: FakeStage(n) for n in set(edges) | {d for ds in edges.values() for d in ds}}
    g = nx.DiGraph()
    g.add_nodes_from(nodes.values())
    g.add_edges_from((nodes[n], nodes[d]) for n, ds in edges.items() for d in ds)
    return g


def test_plan_puts_what_follows_a_side_or_alone_stage_last():
    g = fake_graph({"data": [], "side1": ["data"], "main1": ["data"], "main2": ["main1"], "bench": ["main1"],
                    "post_bench": ["bench"], "report": ["side1", "main2"]})
    plan = parallel_repro.plan_lanes(g, "side*", {"bench"})
    assert plan == parallel_repro.Plan(shared=["data"], side=["side1"], main=["main1", "main2"])
    assert parallel_repro.plan_lanes(g, "side*", {"side1"}).side == []  # an alone stage never runs in a lane


def test_fan_out_stages_depend_on_no_other_one():
    g = fake_graph({"data": [], "model": ["data"], "prop_a": ["model"], "prop_b": ["model"], "prop_c": ["prop_a"],
                    "side1": ["prop_b", "prop_c"], "main1": ["data"]})
    plan = parallel_repro.plan_lanes(g, "side*", set(), "prop_*")
    assert plan.fan == ["prop_a", "prop_b"] and plan.before == ["data", "model"]  # prop_c waits for prop_a
    assert set(plan.shared) == {"data", "model", "prop_a", "prop_b", "prop_c"}
    assert parallel_repro.plan_lanes(g, "side*", set()).fan == []


def test_lanes_keep_only_stale_stages_and_what_follows_them():
    g = fake_graph({"data": [], "side1": ["data"], "main1": ["data"], "main2": ["main1"], "main3": ["data"]})
    plan = parallel_repro.plan_lanes(g, "side*", set())
    assert parallel_repro.with_work(plan, g, {"main1"}) == parallel_repro.Plan(["data"], [], ["main1", "main2"])
    assert parallel_repro.with_work(plan, g, {"side1", "main3"}).main == ["main3"]


def test_lanes_of_the_project_pipeline(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    plan = parallel_repro.load_plan("sweep@*", {"benchmark"}, "proposals*")
    assert plan.before == ["download", "backbones"]
    benchmarks = load_params(REPO_ROOT / "params.yaml").data.eval_benchmarks
    assert sorted(plan.fan) == sorted(["proposals-train", *(f"proposals@{b}" for b in benchmarks)])
    assert plan.side == [f"sweep@{g}" for g in load_params(REPO_ROOT / "params.yaml").sweep.grids]
    assert {"download", "backbones", "proposals-train", "proposals@toy_open"} <= set(plan.shared)
    assert {"train", "evaluate@toy_open", "attention"} <= set(plan.main)
    # the report reads the sweeps' results, the benchmark times things: both wait for step 3
    assert not {"report", "benchmark"} & set(plan.main + plan.shared + plan.side)
    assert not set(plan.main) & set(plan.shared)


# A stage: appends its name to runs.log; a lane stage first marks that it started and waits (up to 60 s) for
# the other lane's stage to start, so it succeeds only if the two lanes really run at once.
RECORD = """\
import json, os, sys, time
name, partner = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
os.makedirs("marks", exist_ok=True)
open("marks/runs.log", "a").write(name + "\\n")
if partner:
    open("marks/started_" + name, "w").close()
if name.startswith("fail"):
    sys.exit("stage %s failed on purpose" % name)
if partner:
    deadline = time.time() + 60
    while not os.path.exists("marks/started_" + partner):
        if time.time() > deadline:
            sys.exit("%s: %s never started beside it" % (name, partner))
        time.sleep(0.05)
os.makedirs("out", exist_ok=True)
json.dump({"cpus": sorted(os.sched_getaffinity(0)), "threads": os.environ.get("FOVSEG_THREADS"), "nice": os.nice(0)},
          open("out/%s.json" % name, "w"))
"""


def make_project(root: Path, side: str = "side1", fans: tuple[tuple[str, str], ...] = ()) -> None:
    """up -> (side | main1 -> main2) -> report; main1 -> bench (alone); ``fans`` ((name, partner) pairs): stages
    between up and the side stage."""
    (root / "record.py").write_text(RECORD)

    def stage(name: str, deps: list[str], partner: str = "") -> str:
        deps_yaml = "".join(f"\n      - out/{d}.json" for d in deps)
        return (f"  {name}:\n    cmd: {sys.executable} record.py {name} {partner}\n    deps:\n      - record.py"
                f"{deps_yaml}\n    outs:\n      - out/{name}.json\n")

    fan_stages = "".join(stage(name, ["up"], partner) for name, partner in fans)
    (root / "dvc.yaml").write_text("stages:\n" + stage("up", []) + fan_stages
                                   + stage(side, ["up", *(name for name, _ in fans)], "main1")
                                   + stage("main1", ["up"], side) + stage("main2", ["main1"])
                                   + stage("bench", ["main1"]) + stage("report", [side, "main2"]))
    subprocess.run([parallel_repro.dvc_exe(), "init", "--no-scm", "-q"], cwd=root, check=True)


def runs(root: Path) -> list[str]:
    log = root / "marks" / "runs.log"
    return log.read_text().split() if log.is_file() else []


def outputs(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "out").glob("*.json")}


@two_cpus
def test_lanes_run_at_once_main_on_its_cpus_side_yielding_on_all(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOVSEG_THREADS", raising=False)
    parallel_repro.main(["--side", "side*", "--alone", "bench"])
    ran = runs(tmp_path)
    assert sorted(ran) == sorted(["up", "side1", "main1", "main2", "bench", "report"])  # each exactly once
    assert ran[0] == "up" and ran.index("main2") > ran.index("main1") and set(ran[-2:]) == {"bench", "report"}
    out = outputs(tmp_path)
    side, main = out["side1"], out["main1"]
    cpus = sorted(os.sched_getaffinity(0))
    assert main["cpus"] == cpus[: len(cpus) // 2] and main["threads"] == str(len(main["cpus"]))
    assert side["cpus"] == cpus and side["threads"] is None  # a sweep's Ray takes every CPU, trials their own threads
    assert side["nice"] == min(19, main["nice"] + parallel_repro.SIDE_NICE)  # it yields to the main lane
    assert len(out["up"]["cpus"]) == len(out["bench"]["cpus"]) == available_cpus()  # steps 1 and 3: every CPU
    assert "side1" in (tmp_path / parallel_repro.SIDE_LOG).read_text()

    parallel_repro.main(["--side", "side*", "--alone", "bench"])  # all up to date: no lane starts, nothing runs
    assert len(runs(tmp_path)) == len(ran)


@two_cpus
def test_fan_out_stages_run_at_once_after_what_they_depend_on(tmp_path, monkeypatch):
    make_project(tmp_path, fans=(("fan_a", "fan_b"), ("fan_b", "fan_a"), ("fan_c", "")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOVSEG_THREADS", raising=False)
    parallel_repro.main(["--side", "side*", "--alone", "bench", "--fan-out", "fan_*"])
    ran = runs(tmp_path)
    fans = ["fan_a", "fan_b", "fan_c"]
    assert sorted(ran) == sorted(["up", *fans, "side1", "main1", "main2", "bench", "report"])  # each once
    assert ran[0] == "up" and set(ran[1:4]) == set(fans)  # fan_a and fan_b at once (handshake), before step 2
    threads = str(available_cpus() // min(3, available_cpus()))
    assert all(outputs(tmp_path)[f]["threads"] == threads for f in fans)
    assert all(parallel_repro.log_file(tmp_path / ".dvc/tmp", f).is_file() for f in fans)

    dvc_yaml = tmp_path / "dvc.yaml"  # one stale fan-out stage (a new command): it runs in step 1's plain repro
    dvc_yaml.write_text(dvc_yaml.read_text().replace("record.py fan_c", "record.py fan_c ''"))
    parallel_repro.main(["--side", "side*", "--alone", "bench", "--fan-out", "fan_*"])
    again = runs(tmp_path)[len(ran):]
    assert again[0] == "fan_c" and not {"up", "fan_a", "fan_b"} & set(again)  # then what depends on it
    assert outputs(tmp_path)["fan_c"]["threads"] is None  # every thread, as in a plain dvc repro


@two_cpus
def test_a_failing_fan_out_stage_stops_the_run_before_the_lanes(tmp_path, monkeypatch, capsys):
    make_project(tmp_path, fans=(("fan_a", "fail_fan"), ("fail_fan", "fan_a")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        parallel_repro.main(["--side", "side*", "--alone", "bench", "--fan-out", "f*"])
    assert exc.value.code != 0
    assert sorted(runs(tmp_path)) == ["fail_fan", "fan_a", "up"]
    err = capsys.readouterr().err
    assert f"fail_fan failed with exit status {exc.value.code}" in err and "failed on purpose" in err


@two_cpus
def test_a_failing_side_lane_fails_the_run_after_the_main_lane_finished(tmp_path, monkeypatch, capsys):
    make_project(tmp_path, side="fail_side")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        parallel_repro.main(["--side", "fail*", "--alone", "bench"])
    assert exc.value.code != 0
    ran = runs(tmp_path)
    assert "fail_side" in ran and "main2" in ran and "report" not in ran and "bench" not in ran
    err = capsys.readouterr().err
    assert "side lane (fail_side) failed" in err and "failed on purpose" in err


def test_serial_is_one_plain_repro(tmp_path, monkeypatch):
    make_project(tmp_path)
    # without lanes the two partner stages would wait for each other in vain: one plain repro runs them in
    # turn, so their partner marks are removed from the commands
    text = (tmp_path / "dvc.yaml").read_text().replace("side1 main1\n", "side1\n").replace("main1 side1\n", "main1\n")
    (tmp_path / "dvc.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    parallel_repro.main(["--serial"])
    assert sorted(runs(tmp_path)) == sorted(["up", "side1", "main1", "main2", "bench", "report"])
    assert not (tmp_path / parallel_repro.SIDE_LOG).exists()


def test_main_lane_takes_half_the_cpus_and_fewer_threads_under_a_quota():
    assert parallel_repro.main_lane_share({0, 1}, 2) == ({0}, 1)
    assert parallel_repro.main_lane_share(set(range(8)), 8) == ({0, 1, 2, 3}, 4)
    assert parallel_repro.main_lane_share(set(range(8)), 2) == ({0, 1, 2, 3}, 1)  # docker --cpus=2 on 8 cores


@two_cpus
@pytest.mark.parametrize("during, signum", [
    ("lanes", signal.SIGTERM), ("fan-out", signal.SIGTERM),
    ("lanes", signal.SIGHUP),  # the terminal or ssh session closed
    ("lanes", signal.SIGKILL), ("fan-out", signal.SIGKILL),  # the launcher cannot act: each group's guard does
], ids=lambda v: v.name if isinstance(v, signal.Signals) else v)
def test_a_stop_signal_stops_every_stage_and_leaves_none_running(tmp_path, during, signum):
    fans = (("fan_a", "fan_b"), ("fan_b", "fan_a")) if during == "fan-out" else ()
    make_project(tmp_path, fans=fans)
    # the partnered stages wait for each other, then sleep: the signal arrives while both run
    (tmp_path / "record.py").write_text(RECORD.replace('os.makedirs("out"', 'time.sleep(60 if partner else 0)\n'
                                                                            'os.makedirs("out"'))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.parallel_repro", "--side", "side*", "--alone", "bench",
                             "--fan-out", "fan_*"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    pair = ["fan_a", "fan_b"] if fans else ["side1", "main1"]
    marks = [tmp_path / "marks" / f"started_{name}" for name in pair]
    deadline = time.time() + 60
    while not all(m.exists() for m in marks) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert all(m.exists() for m in marks), proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == (-signum if signum == signal.SIGKILL else 128 + signum)
    deadline = time.time() + (30 if signum == signal.SIGKILL else 0.5)  # after SIGKILL the guards stop them
    while True:
        time.sleep(0.5)
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(tmp_path))]
        if not left or time.time() > deadline:
            break
    assert not left, f"processes left running after {signal.Signals(signum).name}: {_cmdlines(left)}"
    assert not any((tmp_path / "out" / f"{name}.json").exists() for name in pair)
    assert not {"main2", "side1", "main1"} - set(pair) & set(runs(tmp_path))  # nothing after them started


def _cmdlines(proc_dirs: list[Path]) -> list[str]:
    out = []
    for d in proc_dirs:
        try:
            out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            out.append(f"{d.name} (gone)")
    return out


def _cmdline_has(proc_dir: Path, text: str) -> bool:
    try:
        return text in (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") \
            or text in os.readlink(proc_dir / "cwd")
    except OSError:
        return False


def test_group_guard_passes_the_exit_status_on():
    guard = [sys.executable, "-m", "pipeline.group_guard"]
    assert subprocess.run([*guard, sys.executable, "-c", "raise SystemExit(3)"], timeout=60).returncode == 3
    killed = subprocess.run([*guard, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
                            timeout=60)
    assert killed.returncode == 128 + signal.SIGTERM
