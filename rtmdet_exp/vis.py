"""Drawing boxes with class names onto BGR images (predictions, previews, logged samples)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per class id (golden-ratio hue steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_boxes(
    img: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    scores: np.ndarray | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """A copy of ``img`` (HxWx3 BGR uint8) with xyxy ``boxes`` and their captions drawn."""
    out = np.ascontiguousarray(img).copy()
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))
        caption = f"{name} {float(scores[i]):.2f}" if scores is not None else name
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y1 - th - base - 2, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, caption, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out
