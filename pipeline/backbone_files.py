"""Names of what the backbones stage writes into its output folder (the folder itself comes from dvc.yaml)."""

TOY_CLIP_FILE = "clip.pt"  # the toy CLIP pre-trained on the toy captions
TOY_GENERATOR_DIR = "mask2former"  # the toy Mask2Former, a from_pretrained folder
