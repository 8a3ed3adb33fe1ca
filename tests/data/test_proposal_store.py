import numpy as np
import pytest

from pipeline.data.formats import DatasetError
from pipeline.data.proposal_store import ProposalStore, ProposalWriter


def test_round_trip_and_lazy_lookup(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    with ProposalWriter(tmp_path / "props", meta={"generator": "test"}) as w:
        for i, n in enumerate([3, 0, 5]):
            masks = rng.random((n, 20, 30)) > 0.5
            scores = rng.random(n).astype(np.float32)
            w.add(f"img{i}", masks, scores)
            written[f"img{i}"] = (masks, scores)
    store = ProposalStore(tmp_path / "props")
    assert len(store) == 3 and store.meta["masks"] == 8
    for key in ("img2", "img0", "img1"):
        masks, scores = store[key]
        assert np.array_equal(masks, written[key][0])
        assert np.allclose(scores, written[key][1], atol=1e-5)


def test_failed_write_leaves_no_store(tmp_path):
    """A crash leaves no finished store (a later stage finds nothing to trust); what was committed stays in
    ``<dir>.partial`` for the re-run to resume."""
    with pytest.raises(RuntimeError):
        with ProposalWriter(tmp_path / "props") as w:
            w.add("a", np.ones((1, 4, 4), bool), np.ones(1))
            raise RuntimeError("generator crashed")
    assert not (tmp_path / "props").exists()
    with pytest.raises(DatasetError, match="run `dvc repro proposals`"):
        ProposalStore(tmp_path / "props")
