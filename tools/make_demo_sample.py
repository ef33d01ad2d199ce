"""Make the embedded demo sample ``deepmac/assets/demo_coco`` from the shared COCO subsets.

Picks freely redistributable images (Flickr licence 4 CC BY 2.0, 5 CC BY-SA 2.0, 7 no known
copyright restrictions) from ``coco_tiny`` and ``coco_mini``: 16 from COCO train2017 for
training and 8 from COCO val2017 held out for evaluation. A greedy pass prefers images that add
many not-yet-covered categories per byte, so both VOC and non-VOC classes are well covered while
the files stay small. Images are copied unchanged with exactly their COCO annotations, and
``ATTRIBUTION.md`` lists each image's source and licence.

Usage::

    python tools/make_demo_sample.py [--data ../shared/data] [--out deepmac/assets/demo_coco]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ALLOWED_LICENSES = (4, 5, 7)
SUBSETS = ("coco_tiny", "coco_mini")
#: (split, number of images, byte budget)
PLAN = (("train2017", 16, 3_300_000), ("val2017", 8, 1_700_000))
MAX_INSTANCES = 30  # keeps per-item mask decoding (and the tests) fast
VOC_IDS = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}
#: The standard COCO 2017 licence table (the ids of ``image["license"]``).
_LICENSE_TABLE = (
    ("Attribution-NonCommercial-ShareAlike License", "by-nc-sa/2.0/"),
    ("Attribution-NonCommercial License", "by-nc/2.0/"),
    ("Attribution-NonCommercial-NoDerivs License", "by-nc-nd/2.0/"),
    ("Attribution License", "by/2.0/"),
    ("Attribution-ShareAlike License", "by-sa/2.0/"),
    ("Attribution-NoDerivs License", "by-nd/2.0/"),
    ("No known copyright restrictions", "http://flickr.com/commons/usage/"),
    ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
)
LICENSES = [
    {
        "id": i,
        "name": name,
        "url": url if url.startswith("http") else f"http://creativecommons.org/licenses/{url}",
    }
    for i, (name, url) in enumerate(_LICENSE_TABLE, start=1)
]


def load_candidates(data: Path, split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Allowed-licence images of ``split`` from all subsets (deduplicated), and the categories."""
    candidates: dict[int, dict[str, Any]] = {}
    categories: list[dict[str, Any]] = []
    for subset in SUBSETS:
        with (data / subset / "annotations" / f"instances_{split}.json").open() as f:
            coco = json.load(f)
        categories = categories or coco["categories"]
        anns: dict[int, list[dict[str, Any]]] = {}
        for ann in coco["annotations"]:
            anns.setdefault(ann["image_id"], []).append(ann)
        for image in coco["images"]:
            if image["license"] not in ALLOWED_LICENSES or image["id"] in candidates:
                continue
            path = data / subset / split / image["file_name"]
            image_anns = anns.get(image["id"], [])
            if 0 < sum(not a["iscrowd"] for a in image_anns) <= MAX_INSTANCES:
                candidates[image["id"]] = {
                    "image": image,
                    "anns": image_anns,
                    "path": path,
                    "bytes": path.stat().st_size,
                    "cats": {a["category_id"] for a in image_anns if not a["iscrowd"]},
                }
    return sorted(candidates.values(), key=lambda c: (c["bytes"], c["image"]["id"])), categories


def pick(candidates: list[dict[str, Any]], count: int, budget: int) -> list[dict[str, Any]]:
    """Greedy: most new categories per byte; ties and zero gains go to the smallest file."""
    chosen: list[dict[str, Any]] = []
    covered: set[int] = set()
    used = 0
    pool = list(candidates)
    while len(chosen) < count:
        fitting = [c for c in pool if used + c["bytes"] <= budget]
        if not fitting:
            raise SystemExit(f"cannot fit {count} images in {budget} bytes (picked {len(chosen)})")
        # A small bonus for images that mix VOC and non-VOC classes (both directions of the
        # partially supervised setting then have something to show).
        best = max(
            fitting,
            key=lambda c: (
                (len(c["cats"] - covered) + 0.5 * bool(c["cats"] & VOC_IDS and c["cats"] - VOC_IDS))
                / (c["bytes"] + 50_000),
                -c["bytes"],
            ),
        )
        chosen.append(best)
        pool.remove(best)
        covered |= best["cats"]
        used += best["bytes"]
    return sorted(chosen, key=lambda c: c["image"]["id"])


def write_split(out: Path, split: str, chosen: list[dict[str, Any]], categories: list) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    for c in chosen:
        shutil.copyfile(c["path"], out / split / c["image"]["file_name"])
    coco = {
        "info": {
            "description": "deepmac demo sample: COCO 2017 images under CC BY / CC BY-SA / no "
            "known copyright restrictions, with their official COCO annotations",
            "contributor": "COCO Consortium (annotations); Flickr users (images: ATTRIBUTION.md)",
            "version": "1.0",
        },
        "licenses": LICENSES,
        "images": [c["image"] for c in chosen],
        "annotations": sorted((a for c in chosen for a in c["anns"]), key=lambda a: a["id"]),
        "categories": categories,
    }
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    with (out / "annotations" / f"instances_{split}.json").open("w") as f:
        json.dump(coco, f, separators=(",", ":"))


def write_attribution(out: Path, picked: dict[str, list[dict[str, Any]]]) -> None:
    licenses = {lic["id"]: lic for lic in LICENSES}
    lines = [
        "# Demo sample: sources and licences",
        "",
        "Made by `tools/make_demo_sample.py` from the shared `coco_tiny` and `coco_mini`",
        "subsets of COCO 2017. Image files are copied unchanged.",
        "",
        "- **Annotations**: from the official COCO 2017 instance annotations, © COCO Consortium,",
        "  licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/;",
        "  https://cocodataset.org/#termsofuse).",
        "- **Images**: Flickr photos, each under the licence named below (the COCO `license` id);",
        "  the copyright stays with the photographers. Source page: `flickr_url`.",
        "",
    ]
    for split, chosen in picked.items():
        lines += [
            f"## {split}",
            "",
            "| file | licence | flickr_url | coco_url |",
            "|---|---|---|---|",
        ]
        for c in chosen:
            image = c["image"]
            lic = licenses[image["license"]]
            lines.append(
                f"| {split}/{image['file_name']} | {lic['name']} ({lic['url']}) | "
                f"{image['flickr_url']} | {image['coco_url']} |"
            )
        lines.append("")
    (out / "ATTRIBUTION.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "deepmac" / "assets" / "demo_coco")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    picked = {}
    for split, count, budget in PLAN:
        candidates, categories = load_candidates(args.data, split)
        picked[split] = pick(candidates, count, budget)
        write_split(args.out, split, picked[split], categories)
    write_attribution(args.out, picked)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for split, chosen in picked.items():
        instances = [a for c in chosen for a in c["anns"] if not a["iscrowd"]]
        voc = sum(a["category_id"] in VOC_IDS for a in instances)
        print(
            f"{split}: {len(chosen)} images, {len(instances)} instances ({voc} VOC, "
            f"{len(instances) - voc} non-VOC), "
            f"{len({a['category_id'] for a in instances})} categories, "
            f"{sum(bool(c['cats'] - VOC_IDS) for c in chosen)} images with non-VOC instances"
        )
    print(f"total {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
