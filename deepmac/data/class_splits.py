"""Class splits for partially supervised training: which COCO categories carry mask supervision.

The paper trains with masks for the 20 PASCAL VOC classes and evaluates on the other 60 COCO
classes, and the reverse. The ids below are the COCO category ids of the official configs
(``allowed_masked_classes_ids`` in the Deep-MAC configs, ``coco_split_class_ids('voc')`` in
Model Garden).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: COCO category ids of the 20 PASCAL VOC classes.
VOC_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72,
)  # fmt: skip

#: The 80 COCO category ids in use (1..90 with gaps).
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)

#: COCO category ids of the 60 non-VOC classes.
NONVOC_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in COCO_CATEGORY_IDS if i not in set(VOC_CATEGORY_IDS)
)

SPLITS: dict[str, tuple[int, ...]] = {
    "voc": VOC_CATEGORY_IDS,
    "nonvoc": NONVOC_CATEGORY_IDS,
    "all": COCO_CATEGORY_IDS,
}


def resolve_split(
    split: str | Iterable[int], known_ids: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Turn a split name (``voc``, ``nonvoc``, ``all``) or an explicit id list into COCO ids.

    Args:
        split: a name from ``SPLITS``, a comma-separated string of ids (``"1,3,18"``), or an
            iterable of COCO category ids.
        known_ids: when given, the category ids of the dataset at hand; ``"all"`` then means
            every one of them, and explicit ids must be among them.

    Returns:
        Sorted tuple of COCO category ids.

    Raises:
        ValueError: unknown split name, or ids not in ``known_ids``.
    """
    if isinstance(split, str):
        name = split.strip().lower()
        if name == "all" and known_ids is not None:
            return tuple(sorted(known_ids))
        if name in SPLITS:
            return SPLITS[name]
        try:
            ids = [int(tok) for tok in name.split(",") if tok.strip()]
        except ValueError:
            raise ValueError(
                f"class split must be one of {sorted(SPLITS)} or a comma-separated list of COCO "
                f"category ids, got {split!r}"
            ) from None
    else:
        ids = [int(i) for i in split]
    if not ids:
        raise ValueError("class split is empty: expected at least one COCO category id")
    if known_ids is not None:
        unknown = sorted(set(ids) - set(known_ids))
        if unknown:
            raise ValueError(
                f"class split names category ids {unknown} that the dataset does not define "
                f"(known ids: {sorted(known_ids)})"
            )
    return tuple(sorted(set(ids)))
