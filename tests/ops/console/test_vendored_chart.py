"""The vendored chart library is uPlot 1.6.32 as npm ships it, unchanged, with its licence."""

from __future__ import annotations

import hashlib
import re

from tests.support.servers import PROJECT_ROOT

VENDOR = PROJECT_ROOT / "ops" / "console" / "static" / "vendor" / "uplot"


def test_the_vendored_files_are_the_ones_source_names():
    lines = re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)$", (VENDOR / "SOURCE").read_text(), re.M)
    recorded = {name: digest for digest, name in lines}
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert (VENDOR / "uPlot.iife.min.js").read_text().startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "The MIT License" in (VENDOR / "LICENSE").read_text()
