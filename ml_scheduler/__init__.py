"""Treeline's pure ML planning core: graph analysis, partitioning, extraction and placement.

No I/O, no clock, no global state, no onnxruntime: callers (the cluster orchestrator) take a
snapshot, ask for a plan and apply it themselves. See docs/contracts.md, "ml_scheduler API".
"""
