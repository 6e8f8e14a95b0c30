"""Settings of one cluster orchestrator (``python -m cluster_orchestrator`` builds them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of one cluster orchestrator (seconds unless named otherwise)."""

    name: str
    root_url: str
    public_url: str
    mqtt_host: str
    mqtt_port: int
    location: str = ""
    telemetry_interval: float = 2.0
    heartbeat_misses: int = 3
    push_interval: float = 15.0
    stage_timeout: float = 60.0
    liveness_period: float = 0.5
    profile_timeout: float = 30.0
    reconcile_period: float = 1.0
    max_attempts: int = 5
    replan_margin: float = 0.25
    drift_window: float = 30.0
