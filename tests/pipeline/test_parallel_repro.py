"""pipeline.parallel_repro: the lanes drawn from the real dvc.yaml, and a tiny DVC project run through it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import parallel_repro
from pipeline.runtime import REPO_ROOT
from pipeline.threads import available_cpus

two_cpus = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or available_cpus() < 2,
                              reason="lanes need CPU affinity and two CPUs (else parallel_repro is one dvc repro)")


def test_lanes_of_the_project_pipeline(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    plan = parallel_repro.load_plan("sweep@*", {"benchmark"})
    assert plan.side == ["sweep@modules"]
    assert {"download", "backbones", "proposals-train", "proposals@toy_open"} <= set(plan.shared)
    assert {"train", "evaluate@toy_open", "attention"} <= set(plan.main)
    # the report reads the sweeps' results, the benchmark times things: both wait for step 3
    assert not {"report", "benchmark"} & set(plan.main + plan.shared + plan.side)
    assert not set(plan.main) & set(plan.shared)


RECORD = """\
import json, os, sys, time
name, fail = sys.argv[1], len(sys.argv) > 2
start = time.time()
time.sleep(1.5)
if fail:
    sys.exit("stage %s failed on purpose" % name)
os.makedirs("out", exist_ok=True)
json.dump({"start": start, "end": time.time(), "cpus": sorted(os.sched_getaffinity(0)),
           "threads": os.environ.get("FOVSEG_THREADS")}, open("out/%s.json" % name, "w"))
"""


def make_project(root: Path, side_fails: bool = False) -> None:
    """up -> (side1 | main1) -> report; main1 -> bench (alone)."""
    (root / "record.py").write_text(RECORD)
    py = sys.executable

    def stage(name: str, deps: list[str], extra: str = "") -> str:
        deps_yaml = "".join(f"\n      - out/{d}.json" for d in deps)
        return (f"  {name}:\n    cmd: {py} record.py {name}{extra}\n    deps:\n      - record.py{deps_yaml}\n"
                f"    outs:\n      - out/{name}.json\n")

    (root / "dvc.yaml").write_text("stages:\n" + stage("up", []) + stage("side1", ["up"], " fail" * side_fails)
                                   + stage("main1", ["up"]) + stage("bench", ["main1"])
                                   + stage("report", ["side1", "main1"]))
    subprocess.run([parallel_repro.dvc_exe(), "init", "--no-scm", "-q"], cwd=root, check=True)


def stamps(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "out").glob("*.json")}


@two_cpus
def test_side_and_main_lanes_overlap_on_their_own_cpus(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    parallel_repro.main(["--side", "side*", "--alone", "bench"])
    s = stamps(tmp_path)
    assert set(s) == {"up", "side1", "main1", "bench", "report"}
    side, main = s["side1"], s["main1"]
    assert side["start"] < main["end"] and main["start"] < side["end"], "the two lanes did not run at once"
    assert side["cpus"] and main["cpus"] and not set(side["cpus"]) & set(main["cpus"])
    assert side["threads"] == str(len(side["cpus"])) and main["threads"] == str(len(main["cpus"]))
    assert len(s["up"]["cpus"]) == len(s["bench"]["cpus"]) == available_cpus()  # steps 1 and 3 on every CPU
    assert s["report"]["start"] > max(side["end"], main["end"]) and s["bench"]["start"] > main["end"]
    assert "side1" in (tmp_path / parallel_repro.SIDE_LOG).read_text()
    lock = (tmp_path / "dvc.lock").read_text()
    assert all(f"out/{n}.json" in lock for n in s)  # both lanes' stages recorded


@two_cpus
def test_a_failing_side_lane_fails_the_run_after_the_main_lane_finished(tmp_path, monkeypatch, capsys):
    make_project(tmp_path, side_fails=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        parallel_repro.main(["--side", "side*", "--alone", "bench"])
    assert exc.value.code != 0
    s = stamps(tmp_path)
    assert "main1" in s and "side1" not in s and "report" not in s and "bench" not in s
    err = capsys.readouterr().err
    assert "side lane (side1) failed" in err and "failed on purpose" in err


def test_serial_is_one_plain_repro(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    parallel_repro.main(["--serial"])
    s = stamps(tmp_path)
    assert set(s) == {"up", "side1", "main1", "bench", "report"}
    assert not (tmp_path / parallel_repro.SIDE_LOG).exists()
