"""The Table II accounting scripts on the tiny model (fast): FLOPs and parameter counts."""
from pipeline.scripts import flops, param_counts


def test_vocabulary_dependent_flops_are_only_target_attention_and_classification():
    model = flops.build("fovseg-tiny", 64, flops.TevaConfig())
    (f3, p3), (f7, p7) = (flops.measure(model, 64, 4, c) for c in (3, 7))
    blocks, width, q, embed = 3, 96, 4, 64
    per_class = blocks * 4 * q * width + 2 * q * embed  # q.k and attn.v over the targets + cosine logits
    assert (f7 - f3) == 4 * per_class  # g_k/g_v of the vocabulary are not recomputed per image
    assert p7 - p3 == 4 * blocks * 2 * 2 * embed * width  # ... they are the one-time preparation


def test_flops_script_prints_the_share(capsys):
    flops.main(["--model", "fovseg-tiny", "--size", "64", "--proposals", "4", "--classes", "3", "7"])
    out = capsys.readouterr().out
    assert "vocabulary-dependent" in out and "% of the total" in out


def test_param_counts_breakdown_adds_up():
    model = param_counts.build("fovseg-tiny", flops.TevaConfig(), fiser_layers=1, fiser_heads=2)
    c = param_counts.breakdown(model)
    assert c["f_q"] == 3 * (96 * 96 + 96)
    assert c["teva"] == 3 * ((96 * 96 + 96) + 2 * (64 * 96 + 96))
    assert c["adapter"] == (9 * 16 + 16) + (16 * 9 + 1)
    assert c["inference"] == c["f_q"] + c["teva"] + c["adapter"] and c["training"] == c["inference"] + c["predictor"]
    shared = param_counts.breakdown(param_counts.build("fovseg-tiny", flops.TevaConfig(shared=True), fiser_layers=0))
    assert shared["teva"] * 3 == c["teva"] and shared["predictor"] == 0


def test_paper_preset_classifier_is_lightweight_as_table_ii_says():
    """The paper preset's TeVA (the lightweight one): trainable parameters kept after training round to Table
    II's 25M and the vocabulary-dependent FLOPs stay <= 0.1% at 847 classes (the paper: about 0.09%); the
    full-width TeVA does neither."""
    from pipeline.eval.efficiency import model_accounting
    from pipeline.presets import preset_params

    paper = preset_params("paper")
    light = model_accounting(paper.backbones.clip, paper.model, paper.benchmark.n_proposals)
    assert round(light["trainable_kept"] / 1e6) == 25
    share = light["vocab_flops_share"]
    assert share["847"] <= 0.001 and share["150"] < share["847"]
    full = paper.model.model_copy(update={"teva": paper.model.teva.model_copy(update={"width": 0, "shared": False})})
    heavy = model_accounting(paper.backbones.clip, full, paper.benchmark.n_proposals)
    assert round(heavy["trainable_kept"] / 1e6) > 25 and heavy["vocab_flops_share"]["847"] > 0.001
