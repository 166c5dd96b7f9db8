"""Token buckets: per-source limits on unauthenticated answers and per-allocation bandwidth caps. Pure."""

from __future__ import annotations

MAX_TRACKED_SOURCES = 65536  # bounds the limiter's memory under a flood of spoofed sources


class TokenBucket:
    """`rate` units per second, at most `burst` saved up. allow() spends `amount` if it is there."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def allow(self, amount: float, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class SourceLimiter:
    """One token bucket per source IP (the port is ignored, so a source cannot widen its budget by port)."""

    __slots__ = ("_buckets", "_burst", "_rate")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._burst = burst if burst is not None else rate
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, source_ip: str, now: float) -> bool:
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self.prune(now)
                if len(self._buckets) >= MAX_TRACKED_SOURCES:
                    return False
            bucket = self._buckets[source_ip] = TokenBucket(self._rate, self._burst, now)
        return bucket.allow(1.0, now)

    def prune(self, now: float) -> None:
        """Forget sources whose bucket has refilled: they would start full again anyway."""
        self._buckets = {ip: bucket for ip, bucket in self._buckets.items() if not bucket.full(now)}

    def __len__(self) -> int:
        return len(self._buckets)
