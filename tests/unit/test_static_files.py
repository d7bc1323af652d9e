"""The page's own script keeps its rules, and the vendored files are the
ones VENDORED.md records (quart_app/static/)."""

from __future__ import annotations

import hashlib
import re

from quart_app.edge.assets import STATIC_ROOT, hashed_name, manifest

VENDOR = STATIC_ROOT / "vendor"


def test_vendored_files_match_their_record() -> None:
    record = (VENDOR / "VENDORED.md").read_text()
    listed = dict(re.findall(r"^\| (\S+/\S+) \| ([0-9a-f]{64}) \|$", record, re.MULTILINE))
    on_disk = {
        p.relative_to(VENDOR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "VENDORED.md"
    }
    assert listed == on_disk
    for folder in {name.split("/")[0] for name in on_disk}:
        assert (VENDOR / folder / "LICENSE").exists(), folder
        version = folder.rsplit("-", 1)[1]
        assert f"| {version} |" in record, folder


def test_the_page_script_never_parses_text_as_html_or_code() -> None:
    script = (STATIC_ROOT / "page" / "page.js").read_text()
    for forbidden in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage.setItem",
        "style.",
        'setAttribute("style"',
    ):
        assert forbidden not in script, forbidden
    # The key is kept in sessionStorage, and nowhere else.
    assert script.count("sessionStorage.setItem(") == 1


def test_asset_names_change_with_their_bytes() -> None:
    assert hashed_name("page/page.js", b"a") != hashed_name("page/page.js", b"b")
    assert re.fullmatch(r"page/page\.[0-9a-f]{12}\.js", hashed_name("page/page.js", b"a"))
    served = manifest()
    assert "page/page.js" in served.hashed
    assert not [name for name in served.hashed if name.endswith((".html", ".md"))]
    assert not [name for name in served.hashed if name.endswith(("LICENSE", "NOTICE"))]
