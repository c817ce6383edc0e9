"""Wilson score interval of a binomial proportion."""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n` trials (n >= 1), two-sided; `successes` may be
    fractional (wins with ties counted half).

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse at 0 or n
    successes, which matters with the handful of seeds a learning rate gets.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    center = (successes + z2 / 2) / (n + z2)
    half = z * math.sqrt(successes * (n - successes) / n + z2 / 4) / (n + z2)
    low = 0.0 if successes == 0 else center - half
    high = 1.0 if successes == n else center + half
    return low, high
