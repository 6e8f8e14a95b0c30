"""Score plugins: rank the nodes that passed the filters, each on a 0-100 scale.

Why these scales: a score must mean the same thing in every cycle so that explanations are
comparable, hence fixed log scales for memory and links. Speed and energy efficiency are
relative to the best candidate (there is no absolute "fast"), which is documented per
plugin. The profile's weights combine them (``deployment_descriptors/profiles``).
"""

from __future__ import annotations

import math

import numpy as np

from ml_scheduler.framework.interfaces import MAX_SCORE
from ml_scheduler.framework.request import PlacementRequest
from ml_scheduler.snapshot import ClusterSnapshot

_MIB = 1024 * 1024
# Headroom at which memory stops mattering (a 16 GiB server-class node scores 100).
MEMORY_FULL_SCORE_MB = 16384.0
# Uplinks from 1 Mbit/s (score 0) to 1 Gbit/s (100), log-scaled: each decade counts the same.
UPLINK_MIN_MBPS, UPLINK_FULL_MBPS = 1.0, 1000.0
# Round-trip times from 0 ms (100) to 1 s (0), log-scaled as log10(1 + rtt_ms).
RTT_ZERO_SCORE_MS = 1000.0


def _clip(values: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(values, nan=0.0, posinf=MAX_SCORE, neginf=0.0), 0.0, MAX_SCORE)


class ComputeSpeed:
    """``speed_factor`` relative to the fastest candidate: the main driver of stage latency."""

    name = "compute"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        speed = snapshot.columns().speed[candidates]
        best = speed.max(initial=0.0)
        return _clip(MAX_SCORE * speed / best) if best > 0 else np.zeros(len(candidates))


class MemoryHeadroom:
    """Memory left after holding the whole model's weights, log-scaled up to 16 GiB.

    Room to spare avoids eviction and leaves space for more stages; a node that cannot hold
    the whole model scores 0 here (it may still take a partition). Uses the reported
    available memory when lower than the limit; unknown limit and availability = full score.
    """

    name = "memory"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        cols = snapshot.columns()
        limit = cols.memory_mb[candidates]
        available = cols.memory_available_mb[candidates]
        usable = np.fmin(limit, available)  # fmin ignores nan (not reported)
        headroom = np.maximum(usable - request.model_param_bytes / _MIB, 0.0)
        return _clip(MAX_SCORE * np.log1p(headroom) / math.log1p(MEMORY_FULL_SCORE_MB))


class BatteryScore:
    """Remaining charge in percent; mains-powered nodes score 100, so batteries are used last."""

    name = "battery"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        battery = snapshot.columns().battery[candidates]
        return _clip(np.where(np.isnan(battery), MAX_SCORE, battery))


class LinkQuality:
    """The node's uplink bandwidth and RTT, log-scaled, averaged: cut tensors leave through it."""

    name = "link"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        cols = snapshot.columns()
        uplink = np.maximum(cols.uplink_mbps[candidates], 1e-9)
        rtt = np.maximum(cols.link_rtt_ms[candidates], 0.0)
        bandwidth = np.log10(uplink / UPLINK_MIN_MBPS) / math.log10(UPLINK_FULL_MBPS / UPLINK_MIN_MBPS)
        latency = 1.0 - np.log10(1.0 + rtt) / math.log10(1.0 + RTT_ZERO_SCORE_MS)
        return _clip(MAX_SCORE * (np.clip(bandwidth, 0, 1) + np.clip(latency, 0, 1)) / 2.0)


class LowLoad:
    """``100 - cpu_percent``: a busy node computes its stage slower than its speed suggests."""

    name = "load"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        return _clip(MAX_SCORE - snapshot.columns().cpu_percent[candidates])


class EnergyEfficiency:
    """Energy per unit of work, ``power_w / speed_factor``, relative to the most efficient
    candidate (100). Not raw power: a slow low-power node can spend more energy per
    inference than a fast hungry one, and energy per inference is what the SLA bounds."""

    name = "energy"

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        cols = snapshot.columns()
        speed = cols.speed[candidates]
        power = cols.power_w[candidates]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_work = np.where(speed > 0, power / np.where(speed > 0, speed, 1.0), np.inf)
        finite = per_work[np.isfinite(per_work)]
        if finite.size == 0:
            return np.zeros(len(candidates))
        best = finite.min()
        if best <= 0:  # a node declaring zero power: it and its peers at zero are the best
            return np.where(per_work <= 0, MAX_SCORE, 0.0)
        return _clip(MAX_SCORE * best / per_work)


SCORES = (ComputeSpeed, MemoryHeadroom, BatteryScore, LinkQuality, LowLoad, EnergyEfficiency)
