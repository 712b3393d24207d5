"""Requests per minute on a sliding window, counted in Django's cache.

Two counters per key (this minute and the last), the last one weighted by how much of it still lies within the
past 60 seconds (the approximation nginx and Cloudflare use). A client may spend its whole allowance at once (the
burst), then gets 429 with Retry-After until enough of it has slid out of the window. Counting uses cache.add and
cache.incr, which are atomic in every Django cache backend. With the default local-memory cache each web process
counts for itself: behind N processes a token gets up to N times the rate (set CACHES to Redis for one count).
"""

import math
import time

from django.core.cache import cache

WINDOW = 60.0


def _weighted(key, now):
    current = int(now // WINDOW)
    elapsed = now - current * WINDOW
    previous = cache.get(f"{key}:{current - 1}", 0)
    return current, elapsed, previous


def hit(key, limit, now=None):
    """Count one request under `key`; None when allowed, else the seconds to wait (at least 1)."""
    now = time.time() if now is None else now
    current, elapsed, previous = _weighted(key, now)
    count_key = f"{key}:{current}"
    cache.add(count_key, 0, timeout=int(WINDOW * 2) + 1)
    count = cache.incr(count_key)
    weight = (WINDOW - elapsed) / WINDOW
    if previous * weight + count <= limit:
        return None
    cache.decr(count_key)  # a refused request does not use up the allowance
    return retry_after(previous, count - 1, elapsed, limit)


def retry_after(previous, count, elapsed, limit):
    """Seconds until one more request fits: the last minute's requests slide out first, then this minute's."""
    left = WINDOW - elapsed
    excess = previous * left / WINDOW + count + 1 - limit  # how much must slide out
    if previous and excess <= previous * left / WINDOW:
        return max(1, math.ceil(excess * WINDOW / previous))
    if count + 1 <= limit:
        return max(1, math.ceil(left))
    return max(1, math.ceil(left + (count + 1 - limit) * WINDOW / max(count, 1)))


def over(key, limit, now=None):
    """Whether `key` is already at its limit (failed logins: checked before, counted only on failure)."""
    now = time.time() if now is None else now
    current, elapsed, previous = _weighted(key, now)
    count = cache.get(f"{key}:{current}", 0)
    if previous * (WINDOW - elapsed) / WINDOW + count + 1 <= limit:
        return None
    return retry_after(previous, count, elapsed, limit)


def count(key, now=None):
    """Add one to `key` without checking (a failed authentication)."""
    now = time.time() if now is None else now
    count_key = f"{key}:{int(now // WINDOW)}"
    cache.add(count_key, 0, timeout=int(WINDOW * 2) + 1)
    cache.incr(count_key)
