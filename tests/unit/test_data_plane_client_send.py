"""A TensorClient whose endpoint takes no connection fails within its timeout, never hangs: a
ZeroMQ DEALER with no connected peer blocks a plain send for ever."""

from __future__ import annotations

import time

import numpy as np
import pytest

from node_engine.data_plane.client import TensorClient
from treeline_common.netutil import free_port


def test_sending_to_nobody_times_out_in_time() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with TensorClient(endpoint) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="within 0.3s"):
            client.infer("d/1/0", {"x": np.zeros((1, 4), np.float32)}, timeout=0.3)
        assert time.monotonic() - started < 5.0
