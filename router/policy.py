"""How long a tier stays up after its last request ends.

`fixed` is the tier's `idle_timeout`. `adaptive` is described in router/DESIGN.md; the
gateway and the simulator both call `keep_alive`, so what is simulated is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import TierConfig


def keep_alive(tier: TierConfig, gaps: Sequence[float], boot_seconds: float | None = None) -> float:
    """Seconds to keep an idle instance before stopping it."""
    if tier.policy == "fixed" or len(gaps) < 10:
        return tier.idle_timeout
    return tier.idle_timeout
