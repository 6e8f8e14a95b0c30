"""Optimised model variants, each measured: int8, fp16, pruned, distilled (issue 11, item 4).

Every step takes a model and returns a new ONNX model plus what it did (operation, parameters,
data set, tool versions); every variant is then measured in onnxruntime alone (size in bytes,
accuracy on a held-out split or top-1 agreement with fp32, p50 latency at batch 1) and, per
device class, the fastest variant whose accuracy stays at or above an ``accuracy_floor`` is
chosen (:mod:`model_zoo.optimize.choose`). torch is only used to train and export; importing
this package does not import torch (the modules that need it import it at the top, and are
imported only by the steps that need them).

Modules: ``digits`` (the small CNN on scikit-learn's digits and its data split), ``export``
(torch → one self-contained ONNX file, checked against torch), ``onnx_steps`` (static QDQ int8,
fp16), ``torch_steps`` (structured pruning with physical channel removal, distillation),
``effnet`` (the pretrained EfficientNet-Lite0 from its wheel and scikit-learn's sample images),
``measure`` (accuracy, agreement, interleaved latency), ``choose`` (the pure variant chooser),
``pipeline`` (the steps in order, each a :class:`~model_zoo.optimize.pipeline.Variant` with
lineage and metrics), ``publish`` (each variant as a registry version: register, then PATCH
lineage, metrics and tags; used by ``treeline model optimize``).
"""
