"""What a deployment costs to run and the least it should bid on Morpheus. Pure arithmetic, no database.

Exact throughout: prices come in as Decimal, the sums are Fractions, wei are int. A Morpheus bid is a price per
second of one session (MORPHEUS.md), so the rig's cost per second is shared by the sessions it serves at once:

    W → kWh per hour (W ÷ 1000) → energy $ per hour (× $ per kWh)
    hardware $ per hour = the planned build's cost ÷ (months × 730 h)
    total $ per hour = energy + hardware
    $ per million tokens = total $ per hour ÷ (aggregate tok/s × 3600) × 1,000,000
    minimum bid wei/s = ceil(total $ per hour ÷ 3600 ÷ MOR $ × 10**18 ÷ sessions), never below the floor
"""

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

WEI_PER_MOR = 10**18
FLOOR_WEI_PER_SECOND = 10_000_000_000  # the marketplace's lowest bid price per second (MORPHEUS.md)
HOURS_PER_MONTH = 730  # 8760 h ÷ 12


class EconomicsError(ValueError):
    pass


@dataclass(frozen=True)
class Costs:
    watts: Fraction
    kwh_per_hour: Fraction
    energy_usd_per_hour: Fraction
    hardware_usd_per_hour: Fraction | None  # None: no planned build attached, no hardware cost counted
    usd_per_hour: Fraction
    tokens_per_hour: Fraction
    usd_per_million_tokens: Fraction | None  # None when nothing was generated
    sessions: int
    bid_wei_per_second: int  # per session-second, at least the floor
    cost_wei_per_second: int  # what the costs alone would ask, before the floor
    at_floor: bool

    @property
    def bid_mor_per_second(self):
        return mor(self.bid_wei_per_second)


def _fraction(name, value, minimum=0):
    if value is None or isinstance(value, (bool, float)):
        raise EconomicsError(f"{name} must be an exact number (int, Decimal or Fraction), not {value!r}")
    value = Fraction(value)
    if value < minimum:
        raise EconomicsError(f"{name} must be at least {minimum}")
    return value


def costs(watts, usd_per_kwh, mor_usd, aggregate_tps, sessions, hardware_usd=None, months=24):
    """The costs of one deployment serving `sessions` streams at `aggregate_tps` tok/s together, drawing `watts`.

    Every amount is exact: pass Decimal (or int/Fraction); a float is refused. Benchmarked tok/s and watts arrive as
    floats from the rig: convert them with Decimal(str(x)) first (what the rig printed, not the binary float)."""
    watts = _fraction("watts", watts)
    usd_per_kwh = _fraction("electricity price", usd_per_kwh)
    mor_usd = _fraction("MOR price", mor_usd)
    if mor_usd <= 0:
        raise EconomicsError("the MOR price must be above 0")
    aggregate_tps = _fraction("aggregate tok/s", aggregate_tps)
    if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
        raise EconomicsError("sessions must be a whole number of at least 1")
    if isinstance(months, bool) or not isinstance(months, int) or months < 1:
        raise EconomicsError("months must be a whole number of at least 1")
    kwh_per_hour = watts / 1000
    energy = kwh_per_hour * usd_per_kwh
    hardware = None if hardware_usd is None else _fraction("hardware cost", hardware_usd) / (months * HOURS_PER_MONTH)
    usd_per_hour = energy + (hardware or 0)
    tokens_per_hour = aggregate_tps * 3600
    per_million = usd_per_hour / tokens_per_hour * 1_000_000 if tokens_per_hour else None
    cost_wei = math.ceil(usd_per_hour / 3600 / mor_usd * WEI_PER_MOR / sessions)
    bid = max(cost_wei, FLOOR_WEI_PER_SECOND)
    return Costs(watts=watts, kwh_per_hour=kwh_per_hour, energy_usd_per_hour=energy, hardware_usd_per_hour=hardware,
                 usd_per_hour=usd_per_hour, tokens_per_hour=tokens_per_hour, usd_per_million_tokens=per_million,
                 sessions=sessions, bid_wei_per_second=bid, cost_wei_per_second=cost_wei,
                 at_floor=cost_wei <= FLOOR_WEI_PER_SECOND)


def mor(wei):
    """wei (int) as an exact Decimal amount of MOR: 10_000_000_000 → Decimal('1E-8')."""
    if isinstance(wei, bool) or not isinstance(wei, int):
        raise EconomicsError("wei must be an int")
    return Decimal(wei) / Decimal(WEI_PER_MOR)


def decimal(value, places):
    """A Fraction rounded for display to `places` decimals (the exact value stays in the Fraction)."""
    if value is None:
        return None
    quantum = Decimal(1).scaleb(-places)
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(quantum)


def mor_text(wei):
    """'0.00000001' — MOR written out in full (no exponent), trailing zeros dropped."""
    text = format(mor(wei), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
