"""FOV-Seg in pure PyTorch: the mask classifier (CLIP with mask tokens, TeVA, the Distribution Adapter,
FiSeR), matching and losses, proposal generators, panoptic merging."""
