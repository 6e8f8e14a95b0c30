"""Property: on random DAGs, any increasing cut positions chain back to the whole model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_scheduler.extract import extract_partitions
from ml_scheduler.graph import analyze_model
from model_zoo.synthetic import WIDTH, random_dag_model
from treeline_test_helpers import ort_run

pytest.importorskip("onnxruntime")


@settings(max_examples=30, deadline=None)
@given(n_ops=st.integers(2, 30), seed=st.integers(0, 10_000), skip=st.sampled_from([0.0, 0.3, 0.8]),
       data=st.data())
def test_random_cuts_chain_to_whole_model(n_ops: int, seed: int, skip: float, data: st.DataObject) -> None:
    model = random_dag_model(n_ops, seed=seed, skip_prob=skip)
    graph = analyze_model(model)
    n = len(graph.ops)
    positions = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=min(5, n - 1)), label="positions"))
    x = np.random.RandomState(seed).standard_normal((1, WIDTH)).astype(np.float32)
    whole = ort_run(model.SerializeToString(), {"input": x}, graph.output_names)
    parts = extract_partitions(model, graph, positions)
    values = {"input": x}
    for part in parts:
        values = ort_run(part.model_bytes, {name: values[name] for name in part.inputs}, part.outputs)
    assert set(values) == set(graph.output_names)
    for name in graph.output_names:
        np.testing.assert_allclose(values[name], whole[name], atol=1e-5, rtol=0)
