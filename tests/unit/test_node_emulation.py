"""Device emulation figures: the link-delay formula, profiles -> emulators, the link queue,
and the registration body that carries the figures to the cluster."""

from __future__ import annotations

import pytest

from node_engine.data_plane.forwarding import LinkQueue, link_timing_key
from node_engine.emulation import EmulatedLink, Emulator, link_delay_ms
from node_engine.telemetry import registration_body
from treeline_common.profiles import PROFILES, get_profile

MOBILENET_INPUT_BYTES = 1 * 3 * 224 * 224 * 4  # 602,112 bytes of float32


def test_link_delay_formula() -> None:
    # 1 Mbit/s = 125 bytes/ms: rtt + bytes / (mbps * 125)
    assert link_delay_ms(0, 50.0, 5.0) == pytest.approx(5.0)
    assert link_delay_ms(125_000, 1.0, 0.0) == pytest.approx(1000.0)
    # MobileNetV2's input from an rpi4: ~96.3 ms on the wire + 5 ms rtt
    assert link_delay_ms(MOBILENET_INPUT_BYTES, 50.0, 5.0) == pytest.approx(5.0 + 602_112 / 6_250)
    assert 96.0 < link_delay_ms(MOBILENET_INPUT_BYTES, 50.0, 0.0) < 97.0
    assert link_delay_ms(1000, 0.0, 2.0) == pytest.approx(2.0)  # no bandwidth figure: rtt only


def test_emulators_from_profiles() -> None:
    rpi4 = Emulator.from_profile(get_profile("rpi4"))
    assert rpi4.speed_factor == 0.25
    assert rpi4.link == EmulatedLink(uplink_mbps=50.0, rtt_ms=5.0)
    assert rpi4.link_delay_ms(MOBILENET_INPUT_BYTES) == pytest.approx(101.34, abs=0.01)
    server = Emulator.from_profile(get_profile("server"))
    assert server.link_delay_ms(125_000) == pytest.approx(0.5 + 1.0)
    native = Emulator.from_profile(get_profile("native"))
    assert native.link is None and native.speed_factor == 1.0
    assert native.link_delay_ms(10**9) == 0.0  # real devices never wait


def test_link_queue_orders_by_due_time_and_bounds_the_poll_timeout() -> None:
    links: LinkQueue[str] = LinkQueue()
    assert links.poll_timeout_ms(0.0, 100) == 100
    links.push(10.050, "late")
    links.push(10.010, "early")
    links.push(10.010, "early-2")
    assert len(links) == 3
    assert links.poll_timeout_ms(10.0, 100) == 10
    assert links.poll_timeout_ms(10.0, 5) == 5
    assert links.poll_timeout_ms(11.0, 100) == 0
    assert links.pop_due(10.005) == []
    assert links.pop_due(10.010) == ["early", "early-2"]
    assert links.clear() == ["late"] and len(links) == 0
    assert link_timing_key("d/0") == "d/0->link"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_registration_body_carries_device_figures(name: str) -> None:
    profile = get_profile(name)
    body = registration_body("n1", profile, "tcp://127.0.0.1:5555")
    assert body["power_w"] == profile.power_w
    assert body["radio_nj_per_byte"] == profile.radio_nj_per_byte
    assert body["uplink_mbps"] == profile.uplink_mbps
    assert body["link_rtt_ms"] == profile.link_rtt_ms
    assert body["device_class"] == profile.device_class
    assert body["emulated"] is profile.emulated and body["data_endpoint"] == "tcp://127.0.0.1:5555"


def test_rpi4_registration_figures() -> None:
    body = registration_body("cam", get_profile("rpi4"), "tcp://127.0.0.1:1")
    assert (body["uplink_mbps"], body["link_rtt_ms"], body["device_class"]) == (50.0, 5.0, "rpi4")
    assert (body["power_w"], body["radio_nj_per_byte"]) == (6.0, 50.0)
