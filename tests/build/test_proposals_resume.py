"""The proposals stage resumes from its committed shards after a real SIGKILL, and the finished store is
byte-identical to an uninterrupted one; other settings restart, a damaged store is refused by name.

The Mask2Former generator is replaced by a stub whose masks are thresholds of each image's pixels (deterministic,
milliseconds); the shard size is 2 images so the 6-image toy_val split spans 3 shards.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipeline.build.proposals as P
from pipeline.config import GeneratorParams, ProposalsParams
from pipeline.data.proposal_store import ProposalStore, ProposalWriter
from pipeline.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]
SHARD, BENCH, N_VAL = 2, "toy_val", 6  # toy_root's toy_val has 6 images
BLOCK_AFTER = 3  # the child blocks on its 4th image: shard 0 (images 1-2) committed, image 3 in the open shard


class StubGenerator:
    """Three masks per image (its gray level above 64, 128, 192) and scores from their areas; counts images.
    ``block_after``: sleep (until killed) on the image after that many."""

    def __init__(self, block_after: int | None = None):
        self.block_after, self.images = block_after, 0

    def describe(self) -> str:
        return "stub generator: pixel thresholds"

    def __call__(self, images: list[np.ndarray]) -> list[SimpleNamespace]:
        out = []
        for image in images:
            self.images += 1
            if self.block_after is not None and self.images > self.block_after:
                time.sleep(600)
            gray = image.astype(np.float32).mean(-1)
            masks = np.stack([gray > t for t in (64, 128, 192)])
            out.append(SimpleNamespace(masks=masks, scores=masks.mean(axis=(1, 2)).astype(np.float32)))
        return out


def compute(root: Path, out_dir: Path, stub: StubGenerator) -> dict:
    """The stage's function with the stub generator and 2-image shards (the caller patches nothing)."""
    saved = P.build_generator, P.ProposalWriter
    P.build_generator = lambda *args, **kwargs: stub
    P.ProposalWriter = functools.partial(ProposalWriter, shard_size=SHARD)
    try:
        return P.compute_proposals(BENCH, data_root=str(root), generator=GeneratorParams(),
                                   proposals=ProposalsParams(batch_size=1, min_area=0),
                                   backbones_dir="unused-backbones", out_dir=out_dir, device=torch.device("cpu"))
    finally:
        P.build_generator, P.ProposalWriter = saved


def child_main(root: str, out_dir: str) -> None:
    """Run in a subprocess: computes until the stub blocks, waiting for the parent's SIGKILL."""
    compute(Path(root), Path(out_dir), StubGenerator(block_after=BLOCK_AFTER))


CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("resume_helpers", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.child_main(sys.argv[2], sys.argv[3])
"""


def _files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


@pytest.fixture(scope="module")
def reference(toy_root, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "store"
    stats = compute(toy_root, out, StubGenerator())
    assert stats["images"] == N_VAL and stats["resumed_images"] == 0
    return out


def _committed_shards(partial: Path) -> int:
    try:
        return len(json.loads((partial / "progress.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkilled_run_resumes_and_matches_an_uninterrupted_one(toy_root, reference, tmp_path):
    out = tmp_path / "store"
    partial = out.with_name("store.partial")
    log = (tmp_path / "child.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, __file__, str(toy_root), str(out)], cwd=REPO, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while _committed_shards(partial) < 1:
            assert child.poll() is None, f"the child ended early: {(tmp_path / 'child.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no shard committed within 180 s"
            time.sleep(0.1)
        time.sleep(0.3)  # the child is now blocked in the stub on image 4 (image 3 sits in the open shard)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        log.close()
    assert child.returncode == -signal.SIGKILL
    assert not out.exists() and _committed_shards(partial) == 1  # killed: no finished store, shard 0 kept

    stub = StubGenerator()
    stats = compute(toy_root, out, stub)
    assert stats["resumed_images"] == SHARD and stats["images"] == N_VAL
    assert stub.images == N_VAL - SHARD  # only the images not committed before the kill
    assert not partial.exists()
    assert _files(out) == _files(reference)  # every file byte-identical, meta.json and index.json included
    assert len(ProposalStore(out)) == N_VAL


def test_partial_store_with_other_settings_is_restarted(toy_root, reference, tmp_path):
    out = tmp_path / "store"
    other = ProposalWriter(out, meta={"generator": "another generator"}, shard_size=SHARD)
    for i in range(SHARD):
        other.add(f"stale-{i}", np.ones((1, 4, 4), bool), np.ones(1))
    other.abort()  # a committed shard of another run stays in store.partial
    assert _committed_shards(out.with_name("store.partial")) == 1
    stub = StubGenerator()
    stats = compute(toy_root, out, stub)
    assert stats["resumed_images"] == 0 and stub.images == N_VAL
    assert _files(out) == _files(reference)


@pytest.mark.parametrize("damage, named", [
    (lambda store: (store / "shard-00000.jsonl").write_bytes((store / "shard-00000.jsonl").read_bytes()[:-20]),
     "shard-00000.jsonl"),
    (lambda store: (store / "index.json").write_text((store / "index.json").read_text().replace("[0, 0]", "[0, 1]")),
     "index.json"),
])
def test_damaged_finished_store_is_refused_naming_the_file(reference, tmp_path, damage, named):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    before = (store / named).read_bytes()
    damage(store)
    assert (store / named).read_bytes() != before
    with pytest.raises(DatasetError, match=rf"{store}: {named} is damaged .*delete {store}"):
        ProposalStore(store)
