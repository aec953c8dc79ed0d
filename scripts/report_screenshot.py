"""Screenshot of a report.html for the README: headless Chromium renders the page, the top is kept.

Run: make demo && .venv/bin/python scripts/report_screenshot.py [demo-out] [docs/report-screenshot.png]
Needs Debian's chromium (`make browser` installs it when apt-get is available).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

WIDTH, HEIGHT, KEEP = 1280, 2400, 1500  # window (CSS px) and the height kept from the top


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out") / "report.html"
    dst = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/report-screenshot.png")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not src.is_file():
        sys.exit(f"scripts/report_screenshot.py: {src} not found (run `make demo` first)")
    if browser is None:
        sys.exit("scripts/report_screenshot.py: no chromium here (`make browser` installs Debian's)")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", src.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        im = Image.open(shot).convert("RGB").crop((0, 0, WIDTH, KEEP))
        im = im.resize((WIDTH * 3 // 4, KEEP * 3 // 4), Image.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, optimize=True)
    print(f"wrote {dst} ({dst.stat().st_size // 1024} KB) from {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
