"""Small torch-free ONNX models the collaboration scenarios deploy (built with ``onnx.helper``).

Why not the model zoo's: each scenario needs a model whose shape makes its point, and tests need
the same model a hundred times smaller.

- :func:`camera_net`: a large frame ``[1, 3, H, W]`` whose first two convolutions (stride 4, then
  2) shrink it 12x in bytes (``[1, 8, H/8, W/8]``: 32 KB for a 256 x 256 frame of 786 KB), followed
  by a heavier backbone of 3x3 convolutions and a classifier ``[1, 10]``. Neurosurgeon/DADS's
  case: running the stem where the frame arrives and sending the small cut beats shipping the frame.
- :func:`pipeline_net`: ``depth`` identical 3x3 convolution blocks on ``[1, C, S, S]`` (each with a
  residual Add, so every cut is one tensor of ``C*S*S*4`` bytes), then a classifier ``[1, 10]``:
  uniform stages, so a pipeline over k equal devices can approach k times one device's throughput.

Weights come from ``numpy.random.RandomState(seed)`` scaled to keep activations bounded, so the
outputs of a chain of partitions can be compared with the whole model at 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
IR_VERSION = 8
CLASSES = 10


class _Builder:
    """Accumulates nodes and initialisers of one graph (names are unique by construction)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(values, name=name))
        return name

    def scale(self, name: str, value: float = 0.5) -> str:
        """A scalar initialiser (keeps a residual chain's values bounded)."""
        self.inits.append(numpy_helper.from_array(np.array([value], dtype=np.float32), name=name))
        return name

    def conv(self, name: str, x: str, cin: int, cout: int, kernel: int, stride: int, pad: int) -> str:
        w = self.weight(f"{name}.w", (cout, cin, kernel, kernel))
        b = self.weight(f"{name}.b", (cout,))
        self.nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}.out"], name=name,
                                           kernel_shape=[kernel, kernel], strides=[stride, stride],
                                           pads=[pad] * 4))
        self.nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.act"], name=f"{name}.relu"))
        return f"{name}.act"

    def head(self, x: str, channels: int) -> None:
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
        self.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
        w, b = self.weight("fc.w", (CLASSES, channels)), self.weight("fc.b", (CLASSES,))
        self.nodes.append(helper.make_node("Gemm", ["flat", w, b], [OUTPUT_NAME], name="fc", transB=1))

    def model(self, name: str, input_shape: tuple[int, ...]) -> bytes:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, CLASSES])],
            initializer=self.inits)
        model = helper.make_model(graph, producer_name="treeline.scenarios",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model.SerializeToString()


def camera_net(size: int = 256, width: int = 48, blocks: int = 4, seed: int = 0) -> bytes:
    """The camera model (see the module docstring) for a ``[1, 3, size, size]`` frame.

    ``size`` must be a multiple of 8; ``width`` channels and ``blocks`` 3x3 convolutions make the
    backbone (the part worth running on a fast node). Raises ValueError on a bad ``size``.
    """
    if size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, not {size}")
    b = _Builder(seed)
    x = b.conv("stem1", INPUT_NAME, 3, 8, kernel=4, stride=4, pad=0)
    x = b.conv("stem2", x, 8, 8, kernel=2, stride=2, pad=0)
    x = b.conv("widen", x, 8, width, kernel=3, stride=1, pad=1)
    for i in range(blocks):
        x = b.conv(f"block{i}", x, width, width, kernel=3, stride=1, pad=1)
    b.head(x, width)
    return b.model("camera_net", (1, 3, size, size))


def pipeline_net(channels: int = 32, size: int = 16, depth: int = 12, seed: int = 0) -> bytes:
    """``depth`` equal residual conv blocks on ``[1, channels, size, size]`` (see the module)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    b = _Builder(seed)
    x = INPUT_NAME
    for i in range(depth):
        y = b.conv(f"block{i}", x, channels, channels, kernel=3, stride=1, pad=1)
        b.nodes.append(helper.make_node("Add", [x, y], [f"block{i}.sum"], name=f"block{i}.add"))
        b.nodes.append(helper.make_node("Mul", [f"block{i}.sum", b.scale(f"block{i}.half")],
                                        [f"block{i}.res"], name=f"block{i}.mul"))
        x = f"block{i}.res"
    b.head(x, channels)
    return b.model("pipeline_net", (1, channels, size, size))


TOKEN_INPUTS = ("input_ids", "attention_mask")
HIDDEN_OUTPUT = "last_hidden_state"


def tiny_transformer(vocab: int = 4000, hidden: int = 128, layers: int = 4, seq_len: int = 16,
                     seed: int = 0) -> bytes:
    """A small encoder shaped like MiniLM, for tests: inputs ``input_ids`` and ``attention_mask``
    (int64 ``[1, seq_len]``), output ``last_hidden_state`` (float32 ``[1, seq_len, hidden]``).

    Embedding Gather, then ``layers`` blocks of single-head self-attention (masked with
    ``(1 - mask) * -1e4`` on the scores) and a ReLU feed-forward of width ``4 * hidden``, each with
    a residual Add and LayerNormalization. ``vocab * hidden * 4`` bytes of embedding plus about
    ``12 * hidden**2 * 4`` per layer: 2 MB + 0.8 MB per layer with the defaults.
    """
    b = _Builder(seed)
    f32 = TensorProto.FLOAT
    ones = numpy_helper.from_array(np.ones(hidden, dtype=np.float32), name="ln.gamma")
    zeros = numpy_helper.from_array(np.zeros(hidden, dtype=np.float32), name="ln.beta")
    b.inits += [ones, zeros]
    table = b.weight("embed.table", (vocab, hidden))
    n = b.nodes
    n.append(helper.make_node("Gather", [table, "input_ids"], ["x0"], name="embed", axis=0))
    n.append(helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=f32))
    n.append(helper.make_node("Sub", [b.scale("one", 1.0), "mask_f"], ["mask_inv"], name="mask_inv"))
    n.append(helper.make_node("Mul", ["mask_inv", b.scale("neg", -1e4)], ["mask_bias2"], name="mask_bias"))
    n.append(helper.make_node("Unsqueeze", ["mask_bias2", _axes(b, "axis1", 1)], ["mask_bias"],
                              name="mask_unsqueeze"))
    x = "x0"
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (f"{p}.{t}" for t in "qkv")
        for t in (q, k, v):
            n.append(helper.make_node("MatMul", [x, b.weight(f"{t}.w", (hidden, hidden))], [t], name=t))
        n.append(helper.make_node("Transpose", [k], [f"{p}.kt"], name=f"{p}.kt", perm=[0, 2, 1]))
        n.append(helper.make_node("MatMul", [q, f"{p}.kt"], [f"{p}.s0"], name=f"{p}.scores"))
        n.append(helper.make_node("Mul", [f"{p}.s0", b.scale(f"{p}.scale", float(hidden) ** -0.5)],
                                  [f"{p}.s1"], name=f"{p}.scaled"))
        n.append(helper.make_node("Add", [f"{p}.s1", "mask_bias"], [f"{p}.s2"], name=f"{p}.masked"))
        n.append(helper.make_node("Softmax", [f"{p}.s2"], [f"{p}.probs"], name=f"{p}.softmax", axis=-1))
        n.append(helper.make_node("MatMul", [f"{p}.probs", v], [f"{p}.ctx"], name=f"{p}.ctx"))
        n.append(helper.make_node("MatMul", [f"{p}.ctx", b.weight(f"{p}.o.w", (hidden, hidden))],
                                  [f"{p}.attn"], name=f"{p}.o"))
        n.append(helper.make_node("Add", [x, f"{p}.attn"], [f"{p}.r1"], name=f"{p}.res1"))
        n.append(helper.make_node("LayerNormalization", [f"{p}.r1", "ln.gamma", "ln.beta"], [f"{p}.h"],
                                  name=f"{p}.ln1", axis=-1))
        n.append(helper.make_node("MatMul", [f"{p}.h", b.weight(f"{p}.ff1.w", (hidden, 4 * hidden))],
                                  [f"{p}.f1"], name=f"{p}.ff1"))
        n.append(helper.make_node("Relu", [f"{p}.f1"], [f"{p}.f2"], name=f"{p}.relu"))
        n.append(helper.make_node("MatMul", [f"{p}.f2", b.weight(f"{p}.ff2.w", (4 * hidden, hidden))],
                                  [f"{p}.f3"], name=f"{p}.ff2"))
        n.append(helper.make_node("Add", [f"{p}.h", f"{p}.f3"], [f"{p}.r2"], name=f"{p}.res2"))
        out = HIDDEN_OUTPUT if i == layers - 1 else f"{p}.out"
        n.append(helper.make_node("LayerNormalization", [f"{p}.r2", "ln.gamma", "ln.beta"], [out],
                                  name=f"{p}.ln2", axis=-1))
        x = out
    graph = helper.make_graph(
        n, "tiny_transformer",
        [helper.make_tensor_value_info(name, TensorProto.INT64, [1, seq_len]) for name in TOKEN_INPUTS],
        [helper.make_tensor_value_info(HIDDEN_OUTPUT, f32, [1, seq_len, hidden])], initializer=b.inits)
    model = helper.make_model(graph, producer_name="treeline.scenarios",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _axes(b: _Builder, name: str, axis: int) -> str:
    b.inits.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), name=name))
    return name
