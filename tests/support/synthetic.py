"""Building blocks of synthetic decision traffic: people, arrivals, limits, names.

``tests.support.scenarios`` composes these into labelled legitimate patterns and attacks.
Everything is vectorised numpy/polars: the benchmark generates millions of decisions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.features import FRAME_SCHEMA, MINUTE_MS

Ints = npt.NDArray[np.int64]
Column = npt.NDArray[np.generic] | pl.Series

ROUTES = (
    "/api/home",
    "/api/search",
    "/api/products",
    "/api/cart",
    "/api/me",
    "/api/orders",
    "/api/products/featured",
    "/api/recommendations",
    "/api/notifications",
    "/api/categories",
    "/api/checkout",
    "/api/wishlist",
    "/api/reviews",
    "/api/settings",
    "/api/addresses",
    "/api/payments",
    "/api/support",
    "/api/returns",
    "/api/stores",
    "/api/coupons",
    "/api/login",
    "/api/logout",
    "/api/feed",
    "/api/help",
)
ROUTE_WEIGHTS = 1.0 / np.arange(1, len(ROUTES) + 1) ** 1.1
ROUTE_WEIGHTS /= ROUTE_WEIGHTS.sum()
USER_AGENTS = tuple(
    f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko) {browser}"
    for system in (
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 10_15_7",
        "X11; Linux x86_64",
        "iPhone; CPU iPhone OS 17_4 like Mac OS X",
        "Linux; Android 14; Pixel 8",
    )
    for browser in (
        "Chrome/124.0.0.0 Safari/537.36",
        "Chrome/123.0.0.0 Safari/537.36",
        "Version/17.4 Safari/605.1.15",
        "Firefox/125.0",
        "Edg/124.0.2478.51",
        "SamsungBrowser/24.0",
    )
)
BOT_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.0.0 Safari/537.36"


def people(
    rng: np.random.Generator,
    n: int,
    tag: str,
    *,
    ip_prefix: int,
    rate_median: float,
    sigma: float,
    shared: float = 0.08,
) -> pl.DataFrame:
    """One row per person: key, ip, user_id, user_agent, rate (checks/min)."""
    ip_index = np.arange(n)
    sharing = rng.random(n) < shared
    ip_index[sharing] = rng.integers(0, n, int(sharing.sum()))  # joins another household
    index = np.arange(n)
    return pl.DataFrame(
        {
            "key": named(f"{tag}-key-", index),
            "ip": ips(ip_prefix, n)[ip_index],
            "user_id": named(f"{tag}-user-", index),
            "user_agent": pl.Series(USER_AGENTS).gather(rng.integers(0, len(USER_AGENTS), n)),
            # "a few checks a minute": lognormal, but no person keeps up one every 2 s
            "rate": np.minimum(rate_median * np.exp(sigma * rng.standard_normal(n)), 30.0),
        }
    )


def human_events(
    rng: np.random.Generator,
    tenant: str,
    people: pl.DataFrame,
    *,
    thinning: Callable[[Ints], npt.NDArray[np.float64]] | None = None,
    limit: int = 60,
) -> pl.DataFrame:
    """Poisson arrivals for each person between their ``start`` and ``end``, routes from
    the catalogue, a fixed-window limit of ``limit`` per key per minute, and a rare
    spurious denial (a retry storm of one page)."""
    owner, ts = poisson(
        rng,
        people["rate"].to_numpy(),
        people["start"].to_numpy(),
        people["end"].to_numpy(),
    )
    if thinning is not None:
        keep = rng.random(ts.shape[0]) < thinning(ts)
        owner, ts = owner[keep], ts[keep]
    size = len(ts)
    who = people.select("key", "ip", "user_id", "user_agent")[owner]
    frame = who.with_columns(
        ts=pl.Series(ts),
        tenant=pl.lit(tenant),
        route=pl.Series(routes(rng, size)),
        allowed=pl.lit(True),
        remaining=pl.lit(0, dtype=pl.Int64),
        reason=pl.lit("ok"),
    )
    frame = fixed_window(frame.select(*FRAME_SCHEMA), limit)
    spurious = pl.Series(rng.random(size) < 0.003)
    return frame.with_columns(
        allowed=pl.col("allowed") & ~spurious,
        reason=pl.when(spurious).then(pl.lit("limit")).otherwise(pl.col("reason")),
    )


def fixed_window(frame: pl.DataFrame, limit: int) -> pl.DataFrame:
    """Allowed/remaining as a fixed one-minute window of ``limit`` per key decides them."""
    frame = frame.sort("ts")
    used = pl.int_range(pl.len()).over("key", pl.col("ts") // MINUTE_MS) + 1
    return frame.with_columns(
        allowed=used <= limit,
        remaining=pl.max_horizontal(pl.lit(limit) - used, pl.lit(0)).cast(pl.Int64),
        reason=pl.when(used <= limit).then(pl.lit("ok")).otherwise(pl.lit("limit")),
    )


def poisson(
    rng: np.random.Generator, rates: npt.NDArray[np.float64], starts: Ints, ends: Ints
) -> tuple[Ints, Ints]:
    """Arrivals of independent Poisson processes: (owner index, ts) per arrival."""
    spans = np.maximum(np.asarray(ends) - np.asarray(starts), 0)
    counts = rng.poisson(np.asarray(rates) / MINUTE_MS * spans)
    owner = np.repeat(np.arange(len(counts)), counts)
    ts = np.asarray(starts)[owner] + (rng.random(owner.shape[0]) * spans[owner]).astype(np.int64)
    return owner.astype(np.int64), ts.astype(np.int64)


def periodic(
    rng: np.random.Generator, n: int, rate_per_min: float, jitter: float, starts: Ints, end: int
) -> tuple[Ints, Ints, Ints]:
    """Timer-driven arrivals with ± ``jitter`` relative noise: (owner, ts, step number)."""
    period = MINUTE_MS / rate_per_min
    steps = int((end - int(np.min(starts))) / period) + 1
    gaps = period * (1.0 + jitter * rng.standard_normal((n, steps)))
    times = np.asarray(starts)[:, None] + np.cumsum(np.maximum(gaps, 1.0), axis=1).astype(np.int64)
    owner, step = np.nonzero(times < end)
    return owner.astype(np.int64), times[owner, step], step.astype(np.int64)


def routes(rng: np.random.Generator, size: int) -> pl.Series:
    # gathered in polars: a numpy array of millions of route strings would be huge
    return pl.Series(ROUTES).gather(rng.choice(len(ROUTES), size=size, p=ROUTE_WEIGHTS))


def named(prefix: str, numbers: npt.NDArray[np.integer]) -> npt.NDArray[np.str_]:
    return np.char.add(prefix, numbers.astype(str))


def ips(first_octet: int, n: int) -> npt.NDArray[np.str_]:
    index = np.arange(n)
    address = np.char.add(named(f"{first_octet}.", index // 65536 % 256), ".")
    address = np.char.add(np.char.add(address, (index // 256 % 256).astype(str)), ".")
    return np.char.add(address, (index % 256 + 1).astype(str))


def frame(tenant: str, ts: Ints, **columns: Column) -> pl.DataFrame:
    data: dict[str, pl.Series] = {
        "ts": pl.Series(ts, dtype=pl.Int64),
        "tenant": pl.repeat(tenant, len(ts), eager=True),
    }
    for name, values in columns.items():
        if isinstance(values, pl.Series):
            data[name] = values.alias(name)
        else:
            data[name] = pl.Series(name, values.tolist() if values.dtype == object else values)
    frame = pl.DataFrame(data)
    return frame.select(pl.col(n).cast(dtype) for n, dtype in FRAME_SCHEMA.items()).sort("ts")
