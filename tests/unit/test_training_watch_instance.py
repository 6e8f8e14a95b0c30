"""A training watch follows its own run: the instance it started with, and the root part of a
hierarchical run, never the service's status alone.

A new user's trial: after a cluster restart re-pushed an older run's DELETED instance, the
service's status read "training done: registered digits_mlp:2" and `treeline deploy` ended at
once claiming that older version as this run's result; a hierarchical run showed no rounds,
because the watch followed the newest instance, a cluster part without global rounds.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from treeline_cli.training_view import instance_state, watch_training, watched_instance


def inst(number: int, status: str, detail: str = "", part: str | None = None) -> dict[str, Any]:
    return {"instance": number, "status": status, "status_detail": detail,
            **({"training_part": part} if part else {})}


def round_event(instance: int, rnd: int, accuracy: float) -> dict[str, Any]:
    return {"kind": "training_round", "instance": instance, "round": rnd, "accuracy": accuracy, "clients": 2,
            "ts": float(rnd)}


class Script:
    """A root whose service doc and events change on each poll (the last step repeats)."""

    def __init__(self, steps: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        self.steps = steps
        self.polls = 0

    def service(self, service_id: str) -> dict[str, Any]:
        doc, _ = self.steps[min(self.polls, len(self.steps) - 1)]
        self.polls += 1
        return doc

    def service_events(self, service_id: str) -> list[dict[str, Any]]:
        return self.steps[min(max(self.polls - 1, 0), len(self.steps) - 1)][1]


def service(instances: list[dict[str, Any]], status: str, detail: str = "") -> dict[str, Any]:
    return {"service_id": "s1", "microservice_name": "fl", "status": status, "status_detail": detail,
            "microservice": {"training": {"rounds": 2}}, "instances": instances}


def test_an_older_runs_instance_does_not_end_this_runs_watch() -> None:
    old_done = inst(0, "DELETED", "training done: registered digits_mlp:2")
    # the service mirrors the re-pushed old instance; this run (instance 1) is still training
    this_run = inst(1, "RUNNING", "training: round 1/2")
    running = service([old_done, this_run], "DELETED", old_done["status_detail"])
    done = service([old_done, inst(1, "DELETED", "training done: registered digits_mlp:3")], "DELETED",
                   "training done: registered digits_mlp:3")
    events = [round_event(0, 2, 0.9), round_event(1, 1, 0.5)]
    script = Script([(running, events), (running, events), (done, [*events, round_event(1, 2, 0.8)])])
    out = io.StringIO()
    doc = watch_training(script, {"service_id": "s1"}, Console(file=out, width=100), interval=0,  # type: ignore[arg-type]
                         sleep=lambda _s: None)
    assert script.polls >= 3  # it did not stop at the service's DELETED of the older run
    assert doc["status_detail"] == "training done: registered digits_mlp:3"
    text = out.getvalue()
    assert "digits_mlp:3" in text and "round 2/2" in text and "0.900" not in text, text


def test_a_hierarchical_run_is_followed_through_its_root_part() -> None:
    doc = service([inst(0, "RUNNING", part="root"), inst(1, "RUNNING", part="cluster"),
                   inst(2, "DELETED", "cluster part done", part="cluster")], "RUNNING")
    assert watched_instance(doc, []) == 0
    assert instance_state(doc, 0) == ("RUNNING", "")
    flat = service([inst(0, "DELETED", "training done"), inst(1, "RUNNING")], "DELETED")
    assert watched_instance(flat, []) == 1 and instance_state(flat, 1) == ("RUNNING", "")
    assert instance_state(flat, 7) == ("DELETED", "")  # not listed: the service's own status


def test_a_hierarchical_dry_run_prints_its_parts_and_the_clusters_left_out() -> None:
    from treeline_cli.training_view import hierarchy_plan_lines

    plan = {"hierarchy": {"root_cluster": "c1", "clusters": ["c1", "c3"], "min_clusters": 2,
                          "cluster_rounds": 1,
                          "rejected": {"c2": "training.data: no node carries label data:digits"}}}
    assert hierarchy_plan_lines(plan) == [
        "  root aggregator on c1; cluster aggregators on c1, c3 (min_clusters 2, 1 cluster round(s) per "
        "global round)",
        "  cluster c2 does not take part: training.data: no node carries label data:digits"]
    assert hierarchy_plan_lines({"training": {}}) == []
