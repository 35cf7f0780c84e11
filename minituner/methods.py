"""The fine-tuning methods, the one list every part reads (no torch).

``full`` trains every weight, ``lora`` a low-rank update on frozen float weights, ``qlora``
the same update on weights stored in 4 bits (NF4). The config, the memory calculator, the
command line and the app take their choices from :data:`METHODS`.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("full", "lora", "qlora")


def check_method(method) -> None:
    """Raises ValueError, listing the choices, unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
