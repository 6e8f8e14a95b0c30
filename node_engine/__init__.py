"""Treeline node engine: the daemon that runs model partitions on one (possibly emulated) device.

It registers with its cluster over REST, then talks MQTT (telemetry, liveness, deploy/delete
commands) and serves the partitions it holds on a pyzmq tensor data plane. It imports only
:mod:`treeline_common` and itself — never the orchestrators, the scheduler or torch — so it
installs and runs on a small device with onnxruntime, numpy, pyzmq, paho-mqtt, psutil and
requests alone.
"""
