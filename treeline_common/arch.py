"""CPU architecture names: one spelling per architecture (``platform.machine()``'s Linux names).

SLAs say ``amd64``/``arm64`` (Docker's and Oakestra's words), node engines report
``platform.machine()`` (``x86_64``/``aarch64``): both sides compare normalised names.
"""

from __future__ import annotations

ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64", "arm64": "aarch64",
                "armv8": "aarch64", "arm": "armv7l", "armhf": "armv7l", "armv7": "armv7l"}


def normal_arch(name: str) -> str:
    """``amd64`` -> ``x86_64``, ``arm64`` -> ``aarch64``; other names lower-cased as they are."""
    key = name.strip().lower()
    return ARCH_ALIASES.get(key, key)


def spellings(name: str) -> tuple[str, ...]:
    """Every spelling of ``name``'s architecture: the normal one first, then its aliases."""
    normal = normal_arch(name)
    return (normal, *sorted(alias for alias, target in ARCH_ALIASES.items() if target == normal))
