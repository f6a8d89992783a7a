"""How the suite writes a quantity: one format per quantity, in every table, page and card.

Counts (parameters, tokens, tokens/s) with Pythia's K/M/B/T (70.4M, 1.01B, 300B); FLOPs in
scientific notation with the unit (1.03e20 FLOP); bytes in binary units (20.2 GiB);
device-hours whole above 100 (11,938), 3 significant digits below (0.00954).
"""

from __future__ import annotations

import math

_COUNT_SUFFIXES = ("", "K", "M", "B", "T")


def count(n: float) -> str:
    """A count with 3 significant digits and K/M/B/T: 70426624 -> '70.4M', 3e11 -> '300B'."""
    if n is None or not math.isfinite(n):
        return "-"
    for suffix in _COUNT_SUFFIXES[:-1]:
        if abs(n) < 999.5:
            return f"{n:.3g}{suffix}"
        n /= 1000
    return f"{n:.3g}{_COUNT_SUFFIXES[-1]}"


def flops(n: float) -> str:
    """FLOPs in scientific notation with the unit: 1.0272e20 -> '1.03e20 FLOP'."""
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa}e{int(exponent)} FLOP"


def size_bytes(n: float) -> str:
    """Bytes in binary units: 21689237504 -> '20.2 GiB'."""
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1023.5:
            return f"{n:.3g} {suffix}"
        n /= 1024
    return f"{n:.3g} PiB"


def hours(h: float) -> str:
    """Device-hours: whole hours with thousands separators from 100 up, else 3 significant
    digits (11938.2 -> '11,938', 0.009541 -> '0.00954')."""
    return f"{h:,.0f}" if abs(h) >= 99.5 else f"{h:.3g}"


# Values whose largest is at least this many times their smallest get a log axis.
LOG_AXIS_SPAN = 30.0


def spans_decades(values) -> bool:
    """Plot on a log axis: every value > 0 and the largest >= LOG_AXIS_SPAN x the smallest
    (perplexities falling from millions to hundreds)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= LOG_AXIS_SPAN
