import torch
import torch.nn.functional as F

from models.fiser import FiserPredictor, fiser_loss


def test_loss_is_the_same_alone_and_padded():
    torch.manual_seed(0)
    pred = FiserPredictor(32, layers=2, heads=4).eval()
    text = F.normalize(torch.randn(10, 32), dim=-1)
    tokens = torch.randn(1, 16, 32)
    alone = fiser_loss(pred, text, [[1, 4, 7]], tokens, masked_index=torch.tensor([1]))
    # the same image in a batch whose K_max is 6
    batch = fiser_loss(pred, text, [[1, 4, 7], [0, 2, 3, 5, 6, 8]], torch.cat([tokens, torch.randn(1, 16, 32)]),
                       masked_index=torch.tensor([1, 0]))
    per_image = []
    from models.fiser import pad_class_sets
    emb, valid = pad_class_sets(text, [[1, 4, 7], [0, 2, 3, 5, 6, 8]])
    logits = pred(emb, valid, torch.tensor([1, 0]), torch.cat([tokens, torch.randn(1, 16, 32)]))
    per_image = F.cross_entropy(logits, torch.tensor([1, 0]), reduction="none")
    assert torch.allclose(per_image[0], alone, atol=1e-5)
    assert torch.isfinite(batch)


def test_images_without_classes_add_nothing():
    pred = FiserPredictor(16, layers=1, heads=2)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    loss = fiser_loss(pred, text, [[], []], torch.randn(2, 4, 16))
    assert loss.item() == 0.0
    loss = fiser_loss(pred, text, [[], [2]], torch.randn(2, 4, 16))
    assert torch.isfinite(loss)
