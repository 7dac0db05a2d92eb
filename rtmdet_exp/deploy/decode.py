"""Test-time settings of deployment, and the two halves of decoding that the fast path splits.

The halves live with the model's own decoding (:mod:`rtmdet_exp.models.postprocess`, where
``postprocess`` is ``select_detections(dense_candidates(...))``): :func:`dense_candidates` is
graph-safe, :func:`select_detections` waits for the device. They are re-exported here for the
deployment modules, beside the two settings the latency benchmark and export use.
"""

from __future__ import annotations

from rtmdet_exp.models.postprocess import Candidates, PostprocessConfig, dense_candidates, select_detections

__all__ = ["PAPER_TEST", "DEPLOYMENT", "Candidates", "dense_candidates", "select_detections"]

# The paper's test settings (RTMDet test_cfg) and the usual deployment settings.
PAPER_TEST = PostprocessConfig(score_thr=0.001, nms_pre=30000, iou_threshold=0.65, max_per_img=300)
DEPLOYMENT = PostprocessConfig(score_thr=0.25, nms_pre=30000, iou_threshold=0.65, max_per_img=100)
