"""The partition runtime: the one module of the node engine that imports onnxruntime.

A :class:`PartitionSession` wraps one ``InferenceSession`` and knows its input and output
names, so the data plane can feed it by name and forward its outputs by name. Sessions are
safe to run from several threads at once (onnxruntime's ``run`` is thread-safe and releases
the GIL), which is what lets a node keep several requests in flight per stage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


class PartitionSession:
    """One loaded partition. Construction loads the model (the expensive part)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names: tuple[str, ...] = tuple(i.name for i in self._session.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the partition on the named inputs and return every output by name.

        Raises ``ValueError`` naming the missing inputs, so the caller gets a clear error
        reply instead of an onnxruntime traceback. Extra inputs are ignored.
        """
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"missing inputs {missing}; the stage expects {list(self.input_names)}")
        feed = {name: inputs[name] for name in self.input_names}
        results = self._session.run(list(self.output_names), feed)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results)}

    def close(self) -> None:
        """Drop the session so its memory can be freed (ORT has no explicit close)."""
        self._session = None  # type: ignore[assignment]


def load_partition(path: str | Path, threads: int = 0) -> PartitionSession:
    """Load ``path`` into a new session; onnxruntime errors propagate to the caller."""
    log.debug("loading partition %s (threads=%s)", path, threads)
    return PartitionSession(path, threads)
