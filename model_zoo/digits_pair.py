"""Two digits classifiers built in seconds without torch: a small one for the edge, a large one.

Trained with scikit-learn on the training split of :func:`model_zoo.cascade_probes.digits_probe`
(the same seeded, stratified split, so the probe set is held out) and written as plain ONNX
(Flatten, Gemm, Relu), input ``input`` [1, 1, 8, 8] float32 in [0, 1], output ``logits``
[1, 10]:

- ``small``: multinomial logistic regression on 300 training images, strongly regularised
  (C = 0.05): 650 parameters, about 0.90 accurate and often unsure;
- ``large``: a 64-unit MLP on every training image: about 0.98 accurate.

For the confidence-cascade tests and the ``cascade`` scenario's quick mode; the full scenario
uses the digits CNN and its distilled student (:mod:`model_zoo.optimize`).
"""

from __future__ import annotations

import warnings

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]

from model_zoo.cascade_probes import digits_split

INPUT = "input"
OUTPUT = "logits"
INPUT_SHAPE = [1, 1, 8, 8]


def _onnx(layers: list[tuple[np.ndarray, np.ndarray]], name: str) -> bytes:
    """Flatten, then ``x @ W + b`` per layer with Relu between layers; ``W``: [in, out]."""
    nodes = [helper.make_node("Flatten", [INPUT], ["flat"], axis=1, name="flatten")]
    inits, current = [], "flat"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = OUTPUT if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], name=f"gemm{i}"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, INPUT_SHAPE)],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def small_model(seed: int = 0) -> bytes:
    """The edge model (module docstring)."""
    train, _ = digits_split(seed)
    assert train.labels is not None
    x, y = train.inputs[:300].reshape(300, -1), train.labels[:300]
    fitted = LogisticRegression(C=0.05, max_iter=300).fit(x, y)
    return _onnx([(fitted.coef_.T, fitted.intercept_)], "digits_small")


def large_model(seed: int = 0) -> bytes:
    """The cloud model (module docstring)."""
    train, _ = digits_split(seed)
    x = train.inputs.reshape(len(train.inputs), -1)
    with warnings.catch_warnings():  # stopping at max_iter is the point: seconds, not minutes
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
        fitted.fit(x, train.labels)
    return _onnx([(fitted.coefs_[0], fitted.intercepts_[0]), (fitted.coefs_[1], fitted.intercepts_[1])],
                 "digits_large")
