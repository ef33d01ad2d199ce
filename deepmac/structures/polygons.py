"""Masks as COCO polygons: the outer boundaries of a bool mask, traced along pixel edges and
simplified to a tolerance in pixels (NumPy only: neither OpenCV nor scikit-image is needed).

Tracing follows the cracks between foreground and background pixels, so a vertex is a pixel
corner and the traced polygon covers exactly the mask's pixels (pixel ``(x, y)`` is the unit
square ``[x, x+1] x [y, y+1]``, as COCO and pycocotools' polygon rasteriser have it). Diagonal
neighbours are separate regions (4-connectivity), so no polygon touches itself. COCO polygons
have no holes: a hole is filled; use RLE for masks where holes matter.

Simplification is Douglas-Peucker on each closed boundary: every pixel corner of the boundary
stays within the tolerance of the polygon, so the polygon's area differs from the mask's by at
most about the tolerance times the perimeter. A fixed tolerance would wreck small regions (one
pixel on a 4 x 4 object is a quarter of it), so each region's tolerance is also capped at
``_SIZE_SHARE`` of the square root of its area: 1 pixel from 25 x 25 pixels up, less below.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_polygons"]

#: Edge directions in image coordinates (x right, y down), in clockwise order on screen:
#: right, down, left, up. A turn to the right is ``+1``, to the left ``-1`` (mod 4).
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))
#: A region's tolerance is at most this share of the square root of its area (its side, for a
#: square): the polygon then keeps an IoU of about 0.95 or more with the region.
_SIZE_SHARE = 0.04


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Pixel corner ``(x, y)`` -> directions of the boundary edges starting there, each
    oriented so that the foreground lies on its right (outer boundaries run clockwise on
    screen, holes anticlockwise)."""
    padded = np.pad(mask.astype(bool), 1)  # (H+2, W+2): every region is closed
    inside = padded[1:-1, 1:-1]
    starts: dict[tuple[int, int], list[int]] = {}
    # Pixel (x, y) below background: its top edge (x, y) -> (x+1, y) runs right; and so on.
    sides = (
        (inside & ~padded[:-2, 1:-1], 0, (0, 0)),  # top edge, from the top-left corner
        (inside & ~padded[1:-1, 2:], 1, (1, 0)),  # right edge, from the top-right corner
        (inside & ~padded[2:, 1:-1], 2, (1, 1)),  # bottom edge, from the bottom-right corner
        (inside & ~padded[1:-1, :-2], 3, (0, 1)),  # left edge, from the bottom-left corner
    )
    for exposed, direction, (dx, dy) in sides:
        ys, xs = np.nonzero(exposed)
        for x, y in zip((xs + dx).tolist(), (ys + dy).tolist(), strict=True):
            starts.setdefault((x, y), []).append(direction)
    return starts


def _trace(edges: dict[tuple[int, int], list[int]]) -> list[np.ndarray]:
    """The closed boundaries ``(M, 2)`` float64 made of the edges ``_boundary_edges`` found,
    as their corner vertices (the points where the direction changes), each edge used once."""
    unused = {(corner, d) for corner, directions in edges.items() for d in directions}
    loops = []
    for corner, directions in edges.items():
        for first in [(corner, d) for d in directions]:
            if first not in unused:
                continue
            at, direction = first
            vertices = []
            while True:
                unused.remove((at, direction))
                at = (at[0] + _STEPS[direction][0], at[1] + _STEPS[direction][1])
                # Where two regions touch diagonally a corner has two outgoing edges: the
                # right turn keeps to the region being traced (4-connectivity), and maps the
                # two incoming edges to distinct outgoing ones, so every boundary closes.
                outgoing = edges[at]
                new = next(
                    (direction + t) % 4 for t in (1, 0, 3) if (direction + t) % 4 in outgoing
                )
                if new != direction:
                    vertices.append(at)
                direction = new
                if (at, direction) == first:
                    break
            loops.append(np.asarray(vertices, dtype=np.float64).reshape(-1, 2))
    return loops


def _signed_area(points: np.ndarray) -> float:
    """Shoelace area of a closed ``(M, 2)`` polygon: positive for clockwise-on-screen (outer
    boundaries), negative for holes."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _douglas_peucker(points: np.ndarray, tolerance: float) -> np.ndarray:
    """The points of an open ``(M, 2)`` polyline kept by Douglas-Peucker: every dropped point
    lies within ``tolerance`` of the segment that replaces it. Iterative (no recursion limit
    on long boundaries)."""
    keep = np.zeros(len(points), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        a, b = points[first], points[last]
        segment = b - a
        between = points[first + 1 : last] - a  # (k, 2)
        length = float(np.hypot(*segment))
        if length == 0.0:
            distance = np.hypot(between[:, 0], between[:, 1])
        else:
            distance = np.abs(segment[0] * between[:, 1] - segment[1] * between[:, 0]) / length
        farthest = int(np.argmax(distance))
        if distance[farthest] > tolerance:
            index = first + 1 + farthest
            keep[index] = True
            stack += [(first, index), (index, last)]
    return points[keep]


def _simplify_closed(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed ``(M, 2)`` boundary: split at the vertex farthest from the
    first one, so both halves are open polylines with fixed ends."""
    if tolerance <= 0 or len(points) <= 4:
        return points
    far = int(np.argmax(np.hypot(*(points - points[0]).T)))
    one = _douglas_peucker(points[: far + 1], tolerance)
    two = _douglas_peucker(np.concatenate([points[far:], points[:1]]), tolerance)
    return np.concatenate([one[:-1], two[:-1]])


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of the outer boundaries of a mask.

    Args:
        mask: ``(H, W)`` bool (or 0/1) mask.
        tolerance: Douglas-Peucker tolerance in pixels (lower for regions smaller than
            ``(tolerance / 0.04)**2`` pixels); 0 keeps every corner (the polygons then cover
            the mask's pixels exactly, holes filled).

    Returns:
        One polygon per 4-connected region, each of at least 3 vertices (6 numbers), in pixel
        corner coordinates; an empty list for an empty mask.

    Raises:
        ValueError: a mask that is not 2-D, or a negative tolerance.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance}")
    polygons = []
    for loop in _trace(_boundary_edges(mask)):
        area = _signed_area(loop)
        if area <= 0:  # a hole: COCO polygons cannot cut one out
            continue
        simplified = _simplify_closed(loop, min(tolerance, _SIZE_SHARE * area**0.5))
        if len(simplified) < 3 or _signed_area(simplified) <= 0:
            simplified = loop  # a sliver thinner than the tolerance keeps its exact boundary
        polygons.append([round(float(v), 2) for v in simplified.reshape(-1)])
    return polygons
