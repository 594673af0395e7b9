"""How the console's files are served by a real `ratewatch serve`: from the package, with
their content types, caching by versioned URL, and a Content-Security-Policy that allows no
inline script and no connection but to the server itself."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from ratewatch.cli.serve import console_url
from tests.support.paths import REPO

CONSOLE = REPO / "control" / "console"


class _References(HTMLParser):
    """The page's script and stylesheet URLs, and whatever runs or styles inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            if named.get("src"):
                self.urls.append(str(named["src"]))
            else:
                self.inline.append("<script> without src")
        if tag == "link" and named.get("rel") == "stylesheet":
            self.urls.append(str(named["href"]))
        if tag == "style":
            self.inline.append("<style>")
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag}[{name}]")


def test_the_page_forbids_inline_scripts_and_other_origins(anon: httpx.Client) -> None:
    response = anon.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"
    # no cookie: the key lives in the tab, and nothing here signs anyone in
    assert "set-cookie" not in response.headers
    page = _References()
    page.feed(response.text)
    assert page.inline == []
    assert page.urls, "the page loads its scripts and styles"
    assert all(url.startswith("/console/") for url in page.urls), page.urls


def test_assets_carry_their_types_and_are_kept_by_versioned_url(anon: httpx.Client) -> None:
    page = _References()
    page.feed(anon.get("/").text)
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for url in page.urls:
        response = anon.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == types[Path(url).suffix], url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "content-security-policy" in response.headers
        again = anon.get(url, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""


def test_every_module_import_is_a_shipped_file(anon: httpx.Client) -> None:
    version = re.search(r"/console/([0-9a-f]+)/app\.js", anon.get("/").text)
    assert version is not None
    base = f"/console/{version[1]}/"
    modules = sorted(p.relative_to(CONSOLE).as_posix() for p in CONSOLE.rglob("*.js"))
    for module in modules:
        source = anon.get(base + module)
        assert source.status_code == 200, module
        for imported in re.findall(r'from "(\.{1,2}/[^"]+)"', source.text):
            target = (Path(module).parent / imported).as_posix()
            resolved = anon.get(base + str(Path(target)).replace("\\", "/"))
            assert resolved.status_code == 200, f"{module} imports {imported}"


def test_an_old_versions_url_gets_todays_file_without_long_caching(anon: httpx.Client) -> None:
    response = anon.get("/console/0000000000000000/style.css")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/console/v/nothing.js",
        "/console/v/..%2f..%2fpyproject.toml",
        "/console/v/index.html",  # the page is served at / only, where its version is filled in
        "/console/v/vendor",
    ],
)
def test_what_the_console_does_not_ship_is_a_problem_404(anon: httpx.Client, path: str) -> None:
    response = anon.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_the_package_data_ships_every_console_file() -> None:
    with (REPO / "pyproject.toml").open("rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["control"]
    files = [p.relative_to(CONSOLE.parent).as_posix() for p in CONSOLE.rglob("*") if p.is_file()]
    assert "console/vendor/uPlot.LICENSE.txt" in files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missed == []


@pytest.mark.parametrize(
    ("scheme", "host", "port", "url"),
    [
        ("http", "127.0.0.1", 8080, "http://127.0.0.1:8080/"),
        ("https", "0.0.0.0", 443, "https://127.0.0.1:443/"),
        ("http", "::", 8080, "http://[::1]:8080/"),
        ("http", "fd00::5", 9000, "http://[fd00::5]:9000/"),
        ("http", "ratewatch.internal", 80, "http://ratewatch.internal:80/"),
    ],
)
def test_the_console_address_printed_at_start(scheme: str, host: str, port: int, url: str) -> None:
    assert console_url(scheme, host, port) == url


def _schemes() -> dict[str, dict[str, str]]:
    """The stylesheet's colour variables: the light set (``:root``) and the dark one."""
    css = (CONSOLE / "style.css").read_text()
    light = css.split("@media (prefers-color-scheme: dark)")[0]
    dark = css.split("@media (prefers-color-scheme: dark)")[1].split("\n}\n")[0]
    pattern = re.compile(r"(--[a-z0-9-]+):\s*(#[0-9a-f]{6});")
    return {"light": dict(pattern.findall(light)), "dark": dict(pattern.findall(dark))}


def _luminance(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(one: str, other: str) -> float:
    high, low = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# (foreground, background, WCAG AA minimum): text 4.5:1, the charts' lines 3:1 (1.4.11)
_PAIRS = [
    *(
        (fg, bg, 4.5)
        for fg in ("--text", "--muted", "--accent", "--bad", "--good")
        for bg in ("--bg", "--surface")
    ),
    ("--accent-text", "--accent", 4.5),  # a primary button, the current page's link
    ("--surface", "--bad", 4.5),  # the Lift button
    *(
        (f"--chart-{name}", "--surface", 3.0)
        for name in ("requests", "allowed", "denied", "1", "2", "3", "4")
    ),
]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colours_meet_wcag_aa_contrast(scheme: str) -> None:
    colours = _schemes()[scheme]
    low = {
        f"{fg} on {bg}": round(_contrast(colours[fg], colours[bg]), 2)
        for fg, bg, minimum in _PAIRS
        if _contrast(colours[fg], colours[bg]) < minimum
    }
    assert low == {}
