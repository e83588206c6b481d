"""A strip's reading sums its outlets' meters without the float noise of adding binary fractions."""

from __future__ import annotations

from adapters.kasa_driver import _strip_snapshot
from domain.readings import OutletReading

COMMON = {"alias": "Desk", "model": "HS300", "mac": "AA", "firmware": "1.0", "has_emeter": True, "rssi": -50}


def outlet(
    index: int, power_w: float | None, current_a: float | None, total_wh: float | None, voltage_v: float
) -> OutletReading:
    return OutletReading(outlet_id=f"o{index}", index=index, alias=f"o{index}", is_on=True, power_w=power_w,
                         voltage_v=voltage_v, current_a=current_a, total_wh=total_wh)  # fmt: skip


def test_sums_and_mean_read_as_the_outlets_would_add_up_on_paper() -> None:
    snapshot = _strip_snapshot(
        (outlet(0, 0.1, 0.1, 0.1, 230.1), outlet(1, 0.2, 0.2, 0.2, 230.2), outlet(2, None, None, None, 230.3)),
        COMMON,
    )
    assert (snapshot.power_w, snapshot.current_a, snapshot.total_wh) == (0.3, 0.3, 0.3)
    assert snapshot.voltage_v == 230.2


def test_a_strip_whose_outlets_measure_nothing_has_no_sums() -> None:
    snapshot = _strip_snapshot((outlet(0, None, None, None, 0.0),), COMMON)
    assert (snapshot.power_w, snapshot.current_a, snapshot.total_wh) == (None, None, None)
