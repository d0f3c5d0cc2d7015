"""The browser client's files: shipped in the package, served with their types, and
written so the Content-Security-Policy holds (no inline script or style, no HTML built
from strings, nothing fetched from elsewhere)."""

from __future__ import annotations

import importlib.resources
import re

import pytest

from tests.test_websocket import WebHarness, http
from twisted_chat.doors.web import load_client

FILES = importlib.resources.files("twisted_chat.web")


def text(name: str) -> str:
    return (FILES / name).read_text(encoding="utf-8")


def test_the_client_is_in_the_package():
    files = load_client()
    for name in (b"index.html", b"app.js", b"style.css"):
        assert name in files, f"{name!r} missing from twisted_chat/web"


def test_the_page_has_no_inline_script_style_or_handlers_and_nothing_from_elsewhere():
    page = text("index.html")
    for tag in re.findall(r"<script\b[^>]*>", page, re.I):
        assert "src=" in tag, f"inline script: {tag}"
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page, re.I)
    assert not re.search(r"\son[a-z]+\s*=", page, re.I), "inline event handler"
    assert not re.search(r"\sstyle\s*=", page, re.I), "inline style attribute"
    assert "<style" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I), "an outside URL"


@pytest.mark.parametrize("name", ["app.js"])
def test_the_script_never_turns_strings_into_html_or_code(name):
    script = text(name)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"style\"", "setAttribute('style'"):  # fmt: skip
        assert sink not in script, f"{name} uses {sink}"
    assert not re.search(r"\bimport\s*\(\s*[\"']https?:", script)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (b"/", b"text/html; charset=utf-8"),
        (b"/index.html", b"text/html; charset=utf-8"),
        (b"/app.js", b"text/javascript; charset=utf-8"),
        (b"/style.css", b"text/css; charset=utf-8"),
    ],
)
def test_each_file_is_served_with_its_type_and_the_policy(path, content_type):
    h = WebHarness()
    _, answer = http(h.site, b"GET " + path + b" HTTP/1.1\r\nHost: chat.test:8080\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 200 ok"
    assert b"content-type: " + content_type in lines
    assert any(line.startswith(b"content-security-policy: default-src 'none'") for line in lines)
    assert body
    _, answer = http(h.site, b"HEAD " + path + b" HTTP/1.1\r\nHost: chat.test:8080\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n")
