"""A node's own labels (``--labels``) join its profile's in the registration body."""

from __future__ import annotations

from node_engine.config import parse_args
from node_engine.telemetry import registration_body


def test_labels_flag_adds_to_the_profile_labels_without_duplicates() -> None:
    config = parse_args(["--cluster-url", "http://c", "--profile", "rpi4", "--labels", "camera, rpi,door"])
    assert config.labels == ("camera", "rpi", "door")
    body = registration_body("rpi4-1", config.profile, "tcp://127.0.0.1:1", config.labels, can_train=True)
    # the capability labels (treeline_common.capabilities) come last
    assert body["labels"] == ["rpi", "camera", "door", "treeline:infer", "treeline:train"]


def test_no_labels_flag_keeps_the_profile_labels() -> None:
    config = parse_args(["--cluster-url", "http://c", "--profile", "server"])
    assert config.labels == ()
    body = registration_body("s", config.profile, "tcp://127.0.0.1:1", can_train=False)
    assert body["labels"] == ["server", "treeline:infer"]
