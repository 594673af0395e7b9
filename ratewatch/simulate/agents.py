"""What clients look like on the wire: user agents and the routes people browse."""

from __future__ import annotations

import random

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.81",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
)
MOBILE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Mobile Safari/537.36",
    "ShopApp/5.12.1 (iPhone; iOS 17.4.1; Scale/3.00)",
    "ShopApp/5.12.0 (Android 14; Pixel 7)",
)
TOOLS = (
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "curl/8.5.0",
    "okhttp/4.12.0",
    "axios/1.6.8",
)
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.109 Safari/537.36"
)

# (route template, weight): what a person's browser asks for
_BROWSING = (
    ("/", 10),
    ("/items/{item}", 30),
    ("/categories/{category}", 10),
    ("/search", 12),
    ("/cart", 8),
    ("/account", 4),
    ("/api/notifications", 10),
    ("/api/orders", 6),
    ("/checkout", 2),
    ("/help", 2),
)
_TEMPLATES = tuple(route for route, _ in _BROWSING)
_WEIGHTS = tuple(weight for _, weight in _BROWSING)
_CATEGORIES = ("shoes", "books", "garden", "toys", "kitchen", "audio", "games", "sports")


def browser(rng: random.Random, mobile_share: float = 0.3) -> str:
    return rng.choice(MOBILE if rng.random() < mobile_share else BROWSERS)


def browsing_route(rng: random.Random) -> str:
    """A route a person visits: popular items far more often than the rest."""
    template = rng.choices(_TEMPLATES, _WEIGHTS)[0]
    if "{item}" in template:
        return template.format(item=min(int(rng.paretovariate(0.8)), 20_000))
    if "{category}" in template:
        return template.format(category=rng.choice(_CATEGORIES))
    return template
