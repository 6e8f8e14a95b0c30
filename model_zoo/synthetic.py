"""Random DAG models of any size, built with onnx.helper (no torch), for property and scale tests.

Why: hand-written models cover the shapes we thought of; random DAGs with long skip
connections, shared constants, ``Constant`` nodes consumed far away and early graph outputs
cover the ones we did not. Deterministic in ``seed``; values stay bounded (Tanh/Sigmoid and
scaled weights) so chained outputs can be compared with tight tolerances.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 8


def random_dag_model(
    n_ops: int, seed: int = 0, skip_prob: float = 0.3, extra_output: bool = True
) -> onnx.ModelProto:
    """A valid ONNX model with ``n_ops`` compute nodes on ``[1, WIDTH]`` float32 tensors.

    Input "input", outputs "output" and (if ``extra_output`` and ``n_ops >= 4``) an early tensor
    exposed as a second graph output. Nodes are emitted in a topological order.
    """
    if n_ops < 1:
        raise ValueError("n_ops must be >= 1")
    rng = np.random.RandomState(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shared = numpy_helper.from_array(np.full((1, WIDTH), 0.5, dtype=np.float32), name="shared_half")
    inits.append(shared)
    tensors = ["input"]
    for i in range(n_ops):
        prev = tensors[-1]
        out = f"t{i}" if i < n_ops - 1 else "output"
        kind = rng.randint(6)
        if kind == 0:
            nodes.append(helper.make_node("Tanh", [prev], [out], name=f"op{i}"))
        elif kind == 1:
            other = tensors[rng.randint(len(tensors))] if rng.rand() < skip_prob else prev
            nodes.append(helper.make_node("Add", [prev, other], [out], name=f"op{i}"))
        elif kind == 2:
            nodes.append(helper.make_node("Mul", [prev, "shared_half"], [out], name=f"op{i}"))
        elif kind == 3:
            nodes.append(helper.make_node("Mul", [prev, "const_scale"], [out], name=f"op{i}"))
        elif kind == 4:
            weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, name=f"w{i}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"op{i}"))
        else:
            nodes.append(helper.make_node("Sigmoid", [prev], [out], name=f"op{i}"))
        if kind != 1 and rng.rand() < skip_prob and len(tensors) > 2:
            # Long skip: fold a random earlier tensor back in, keeping ``out`` as the chain head.
            skipped = tensors[rng.randint(len(tensors) - 1)]
            mixed = f"{out}_mix" if out != "output" else "output"
            if out == "output":
                nodes[-1].output[0] = "pre_output"
                out = "pre_output"
            nodes.append(helper.make_node("Add", [out, skipped], [mixed], name=f"op{i}_skip"))
            out = mixed
        tensors.append(out)
    if any("const_scale" in node.input for node in nodes):  # an unused Constant makes ORT warn
        nodes.insert(0, helper.make_node("Constant", [], ["const_scale"], name="const_scale",
                                         value=numpy_helper.from_array(np.array([0.9], dtype=np.float32))))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, WIDTH])]
    if extra_output and n_ops >= 4:
        early = tensors[len(tensors) // 3]
        outputs.append(helper.make_tensor_value_info(early, TensorProto.FLOAT, [1, WIDTH]))
    graph = helper.make_graph(nodes, f"random_dag_{n_ops}_{seed}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, WIDTH])],
                              outputs, initializer=inits)
    model = helper.make_model(
        graph, producer_name="treeline.model_zoo", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
