"""From a trained detector to deployment: fused inference, fast batch-1 prediction, export, evaluation reports.

* :mod:`.inference` — :class:`~.inference.InferenceModel`: uint8 images -> class scores and decoded
  boxes (conv+BN fused, fp16/bf16, channels_last), the one module behind the fast path and export;
* :mod:`.decode` — test-time decoding split into a graph-safe half (fixed shapes, no host sync) and
  the host half (class-aware NMS), together equal to :func:`rtmdet_exp.models.postprocess.postprocess`;
* :mod:`.fast` — CUDA-graph replay of the graph-safe half, with an eager fallback that runs anywhere;
* :mod:`.latency` — median latency of a network at batch 1 (what a run records as ``perf/latency_ms``);
* :mod:`.nms_op` and :mod:`.onnx` — ONNX export with decoding and an optional in-graph batched NMS;
* :mod:`.breakdown` — what a COCO evaluation says beyond its 12 numbers (per-class and per-size AP,
  precision-recall curves, a confusion matrix).
"""
