"""Free-text radiology reports -> named sections (FINDINGS, IMPRESSION, ...).

MIMIC-CXR reports are plain text with upper-case section headers ending in a colon::

    FINAL REPORT
    EXAMINATION:  CHEST (PA AND LAT)
    INDICATION:  ___F with new onset ascites
    FINDINGS:
    There is no focal consolidation ...
    IMPRESSION:
    No acute cardiopulmonary process.

Text before the first header is kept under ``"preamble"``.
"""

from __future__ import annotations

import re
from pathlib import Path

# A header is an upper-case phrase at the start of a line followed by a colon; the text after the
# colon on the same line belongs to the section.
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()\-]*[A-Z)])[ \t]*:", re.MULTILINE)

# Some radiologists merge sections; these headers count as the named section.
_FINDINGS_HEADERS = ("FINDINGS", "FINDINGS AND IMPRESSION", "FINDING")
_IMPRESSION_HEADERS = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS")


def _squash(text: str) -> str:
    return " ".join(text.split())


def parse_report_sections(text: str) -> dict[str, str]:
    """Split a report into ``{HEADER: text}``; whitespace inside each section collapsed."""
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    preamble = _squash(text[: matches[0].start()] if matches else text)
    if preamble:
        sections["preamble"] = preamble
    for match, following in zip(matches, [*matches[1:], None]):
        end = following.start() if following is not None else len(text)
        name = " ".join(match.group(1).split())
        body = _squash(text[match.end() : end])
        # A repeated header (rare) continues the section rather than replacing it.
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def findings_and_impression(text: str) -> tuple[str | None, str | None]:
    """The FINDINGS and IMPRESSION sections of a report (None where absent or empty)."""
    sections = parse_report_sections(text)
    findings = next((sections[h] for h in _FINDINGS_HEADERS if sections.get(h)), None)
    impression = next((sections[h] for h in _IMPRESSION_HEADERS if sections.get(h)), None)
    return findings, impression


def read_report(path: str | Path) -> tuple[str | None, str | None]:
    """Read a report file and return its ``(findings, impression)``."""
    return findings_and_impression(Path(path).read_text(encoding="utf-8", errors="replace"))
