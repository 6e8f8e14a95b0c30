"""Network receive/transmit rates over the host's interfaces (loopback excluded), through psutil."""

from __future__ import annotations

import psutil

from node_engine.sources.base import Rate, Readings, SourceContext
from treeline_common.messages import NetworkReading

LOOPBACK = ("lo", "lo0")


class NetworkSource:
    """``network``: a :class:`NetworkReading`; rates in bytes/s, None on the first sample.

    Absent on a host with no interface but loopback. Interfaces that come or go between samples
    restart the rate window (their counters would make the sum jump).
    """

    name = "network"
    replaced_when_emulated = False

    def __init__(self, context: SourceContext) -> None:
        self._context = context
        self._rate = Rate()
        self._interfaces: list[str] = []

    def _sample(self) -> tuple[list[str], tuple[float, ...] | None]:
        counters = {nic: c for nic, c in psutil.net_io_counters(pernic=True).items() if nic not in LOOPBACK}
        interfaces = sorted(counters)
        if interfaces != self._interfaces:
            self._rate = Rate()
            self._interfaces = interfaces
        totals = (float(sum(c.bytes_recv for c in counters.values())),
                  float(sum(c.bytes_sent for c in counters.values())))
        return interfaces, self._rate.update(self._context.monotonic(), totals)

    def probe(self) -> bool:
        interfaces, _ = self._sample()
        return bool(interfaces)

    def read(self) -> Readings:
        interfaces, rates = self._sample()
        return {"network": NetworkReading(rx_bytes_per_s=round(rates[0], 1) if rates else None,
                                          tx_bytes_per_s=round(rates[1], 1) if rates else None,
                                          interfaces=interfaces)}

    def close(self) -> None:
        """Nothing to release."""
