"""Deployment descriptors: the SLA v2.0 schema (Oakestra's plus Treeline's ML extension),
its validation, typed read-only views, shipped examples and scheduler profiles.

One definition of the SLA for every part: the root validates submissions with
:func:`validate_sla` / :func:`parse_sla`, the cluster views forwarded microservices with
:func:`parse_microservice`; nobody else re-reads raw SLA dicts. Field reference: README.md here.
"""

from __future__ import annotations

from .example_slas import example_path, example_sla
from .inputs import InputSpec, signature_inputs, signature_problems
from .profiles import SchedulerProfile, load_profile, profile_from_dict
from .validation import format_path, sla_schema, validate_microservice, validate_sla
from .views import (
    Application,
    Microservice,
    MlConstraints,
    ModelSpec,
    NodeSelector,
    Privacy,
    Sla,
    parse_microservice,
    parse_sla,
)

__all__ = [
    "Application",
    "InputSpec",
    "Microservice",
    "MlConstraints",
    "ModelSpec",
    "NodeSelector",
    "Privacy",
    "SchedulerProfile",
    "Sla",
    "example_path",
    "example_sla",
    "format_path",
    "load_profile",
    "parse_microservice",
    "parse_sla",
    "profile_from_dict",
    "signature_inputs",
    "signature_problems",
    "sla_schema",
    "validate_microservice",
    "validate_sla",
]
