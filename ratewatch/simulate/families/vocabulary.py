"""Route and user-agent names made up per seed, so that no rule can learn a fixed string."""

from __future__ import annotations

import random

_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"


class Vocabulary:
    """The names one seed's traffic uses: routes for signing in, paying, the catalogue,
    the API, health checks and launches, and user agents in browser or tool shape."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        words: set[str] = set()
        while len(words) < 24:
            words.add(self._word())
        self.words = sorted(words)
        rng.shuffle(self.words)
        pick = iter(self.words)
        self.login = f"/{next(pick)}/{next(pick)}"
        self.checkout = f"/{next(pick)}/{next(pick)}"
        self.catalogue = f"/{next(pick)}"
        self.account = f"/{next(pick)}/{next(pick)}"
        self.health = f"/{next(pick)}"
        self.launch = f"/{next(pick)}/{next(pick)}"
        self.partner = f"/{next(pick)}/{next(pick)}"
        self.api = tuple(f"/{next(pick)}/{w}" for w in (next(pick), next(pick), next(pick)))
        self.pages = tuple(f"/{w}" for w in pick)

    def _word(self) -> str:
        rng = self._rng
        return "".join(
            rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4))
        )

    def browse(self, rng: random.Random) -> str:
        """A page a person visits: Zipf-like popularity over the seed's pages."""
        pages = self.pages + self.api
        index = min(len(pages) - 1, int(rng.paretovariate(1.2)) - 1)
        return pages[index]

    def browser(self, rng: random.Random) -> str:
        """A browser-shaped user agent with made-up engine names and versions."""
        platform = rng.choice(("Windows NT 10.0; Win64; x64", "X11; Linux x86_64", "Macintosh"))
        engine = self.words[rng.randrange(len(self.words))].capitalize()
        return (
            f"Mozilla/5.0 ({platform}) {engine}/{rng.randint(90, 140)}.0."
            f"{rng.randint(0, 9999)} Safari/537.{rng.randint(1, 40)}"
        )

    def tool(self, rng: random.Random) -> str:
        """A library or script's user agent: a made-up name and version."""
        name = self.words[rng.randrange(len(self.words))]
        return f"{name}/{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"

    def agents(self, rng: random.Random, count: int, *, tools: bool) -> list[str]:
        """``count`` distinct-ish user agents to rotate through."""
        make = self.tool if tools else self.browser
        return [make(rng) for _ in range(count)]
