"""Models: the crop-then-segment mask branch and the models built around it."""

from deepmac.models.mask_branch import MaskBranch, coordinate_embedding, sample_at_box_centres

__all__ = ["MaskBranch", "coordinate_embedding", "sample_at_box_centres"]
