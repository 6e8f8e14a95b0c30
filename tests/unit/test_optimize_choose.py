"""model_zoo.optimize.choose: the fastest variant under the accuracy floor, from given numbers."""

from __future__ import annotations

import pytest

from model_zoo.optimize.choose import (
    BELOW_FLOOR,
    SLOWER,
    Candidate,
    DeviceClass,
    choose_per_device_class,
    choose_variant,
)
from model_zoo.optimize.pipeline import parse_steps

FP32 = Candidate("fp32", 0.99, 1.0, 600)
INT8 = Candidate("int8", 0.985, 1.3, 170)  # smaller, but slower here: size must not decide
FP16 = Candidate("fp16", 0.99, 0.9, 300)
PRUNED = Candidate("pruned", 0.981, 0.5, 290)
STUDENT = Candidate("distilled", 0.95, 0.2, 50)  # fastest, below the floor


@pytest.mark.parametrize(("candidates", "floor", "chosen", "speedup"), [
    ([FP32, INT8, FP16, PRUNED, STUDENT], 0.98, "pruned", 2.0),
    ([FP32, INT8, FP16, PRUNED, STUDENT], 0.9, "distilled", 5.0),
    ([FP32, INT8, FP16, PRUNED, STUDENT], 0.985, "fp16", 1.0 / 0.9),
    ([FP32, INT8], 0.98, "fp32", 1.0),  # int8 clears the floor but is slower: fp32 stays
    ([FP32, Candidate("fp16", 0.99, 1.0, 300)], 0.98, "fp16", 1.0),  # a tie goes to the smaller one
])
def test_the_fastest_variant_above_the_floor_is_chosen(candidates: list[Candidate], floor: float, chosen: str,
                                                       speedup: float) -> None:
    choice = choose_variant(candidates, baseline="fp32", accuracy_floor=floor)
    assert choice.variant == chosen
    assert choice.speedup == pytest.approx(speedup)
    assert set(choice.rejected) == {c.name for c in candidates} - {chosen}
    for c in candidates:
        if c.name != chosen:
            assert choice.rejected[c.name] == (BELOW_FLOOR if c.quality < floor else SLOWER)


def test_no_variant_above_the_floor_is_a_result_with_reasons() -> None:
    choice = choose_variant([FP32, STUDENT], baseline="fp32", accuracy_floor=0.999)
    assert choice.variant is None and choice.speedup is None
    assert choice.rejected == {"fp32": BELOW_FLOOR, "distilled": BELOW_FLOOR}


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="baseline"):
        choose_variant([INT8], baseline="fp32", accuracy_floor=0.9)
    with pytest.raises(ValueError, match="p50_ms"):
        choose_variant([FP32, Candidate("x", 1.0, 0.0, 1)], baseline="fp32", accuracy_floor=0.9)


def test_emulated_classes_are_scaled_and_marked() -> None:
    classes = [DeviceClass("native-x86_64", 1.0, False), DeviceClass("rpi4", 0.25, True)]
    choices = choose_per_device_class([FP32, PRUNED], classes, baseline="fp32", accuracy_floor=0.98)
    host, rpi = choices["native-x86_64"], choices["rpi4"]
    assert (host.emulated, rpi.emulated) == (False, True)
    assert host.p50_ms == pytest.approx(0.5) and rpi.p50_ms == pytest.approx(2.0)
    assert host.variant == rpi.variant == "pruned" and rpi.speedup == pytest.approx(host.speedup or 0)


@pytest.mark.parametrize("text", ["", "int8,bogus", "int8,int8"])
def test_steps_are_validated(text: str) -> None:
    with pytest.raises(ValueError, match="steps"):
        parse_steps(text)


def test_steps_parse() -> None:
    assert parse_steps(" int8, fp16,prune,distill ") == ("int8", "fp16", "prune", "distill")
