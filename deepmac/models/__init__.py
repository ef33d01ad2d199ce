"""Models: the crop-then-segment mask branch every family shares (``mask_branch``), the three
families (``box_prompted``, ``deepmac``, ``deepmarc``: a network and its criterion each), and the
registry that builds, trains, scores, serves and exports them (``families``)."""

from deepmac.models.mask_branch import (
    EmbeddingFeatures,
    MaskBranch,
    coordinate_embedding,
    sample_at_box_centres,
)

__all__ = ["EmbeddingFeatures", "MaskBranch", "coordinate_embedding", "sample_at_box_centres"]
