"""DDP path on CPU (gloo, 2 processes on loopback): the code GPUs run with torchrun."""
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.checkpoints import set_aside_folder
from tests.conftest import no_object_embedding
from tests.train.ddp import free_port, init_rank_with_toy_model


def _worker(rank: int, world: int, port: int, toy_root: str, out_dir: str) -> None:
    from pipeline.config import TrainParams
    from pipeline.train.data import TrainSet
    from pipeline.train.recipe import TrainingRecipe

    model, ds = init_rank_with_toy_model(rank, world, port, toy_root)
    emb = torch.nn.functional.normalize(torch.randn(len(ds.vocab), model.embed_dim,
                                                    generator=torch.Generator().manual_seed(1)), dim=-1)
    cfg = TrainParams(iterations=2, batch_size=4, warmup_iters=0, checkpoint_every=2, crop_size=64, mask_source="gt",
                      max_masks=8, amp=True)
    recipe = TrainingRecipe(model, TrainSet(ds, None, 64, 0.5, 1.5, "gt", 8, image_size=64, grid=32), lambda: emb, cfg,
                            seed=0,
                            device=torch.device("cpu"), checkpoint_dir=Path(out_dir),
                            no_object_source=lambda: no_object_embedding(model.embed_dim))
    recipe.setup()
    recipe.train()
    q = model.visual.blocks[0].attn.q_proj.weight.detach().clone()
    gathered = [torch.zeros_like(q) for _ in range(world)]
    dist.all_gather(gathered, q)
    assert torch.equal(gathered[0], gathered[1]), "replicas diverged: gradients were not all-reduced"

    def fresh_recipe():
        r = TrainingRecipe(model, TrainSet(ds, None, 64, 0.5, 1.5, "gt", 8, image_size=64, grid=32), lambda: emb, cfg,
                            seed=0,
                           device=torch.device("cpu"), checkpoint_dir=Path(out_dir),
                           no_object_source=lambda: no_object_embedding(model.embed_dim))
        r.setup()
        return r

    assert fresh_recipe().start == 2  # every rank resumes the finished checkpoint
    dist.barrier()
    if rank == 0:
        (Path(out_dir) / "last.pt").write_bytes(b"not a checkpoint")
    dist.barrier()
    assert fresh_recipe().start == 0  # rank 0 sets the damaged file aside, the others then find none
    dist.barrier()
    assert len(list(set_aside_folder(Path(out_dir) / "last.pt").glob("last.pt.corrupt-*"))) == 1
    dist.destroy_process_group()


def test_two_process_ddp_keeps_replicas_in_sync(toy_root, tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(toy_root), str(tmp_path)), nprocs=2, join=True)
    assert not (tmp_path / "last.pt").exists()
    assert len(list(set_aside_folder(tmp_path / "last.pt").glob("last.pt.corrupt-*"))) == 1


def test_each_rank_draws_its_own_augmentation_and_rank_0_keeps_the_single_process_stream():
    from pipeline.train.data import data_seed

    assert data_seed(3, 17) == data_seed(3, 17, rank=0) == 3 * 1_000_003 + 17
    assert len({data_seed(3, 17, rank=r) for r in range(8)}) == 8
