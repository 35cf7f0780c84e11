"""The fine-tuning methods (minituner.methods): one list, and check_method, which refuses
anything else with a ValueError that lists the choices."""

from __future__ import annotations

import pytest

from minituner.methods import METHODS, check_method


def test_the_three_methods_in_order():
    assert METHODS == ("full", "lora", "qlora")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_accepted(method):
    assert check_method(method) is None


@pytest.mark.parametrize("method", ["prefix", "LoRA", "lora ", "", None, 1, ("lora",), ["lora"]])
def test_anything_else_is_refused_listing_the_choices(method):
    with pytest.raises(ValueError) as e:
        check_method(method)
    msg = str(e.value)
    assert msg.startswith(f"unknown method {method!r}; ")
    assert msg.endswith("choose one of: full, lora, qlora")
