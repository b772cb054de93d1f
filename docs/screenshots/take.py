"""Screenshots of the dashboards for docs/dashboards.md.

    .venv/bin/python docs/screenshots/take.py [--database-url sqlite:////tmp/shot.db] [--scale 0.03]

Headless Chromium cannot sign in by itself, so the pages are rendered by the real app through
the Flask test client, signed in as a person would be (sign-in form, CSRF token), written to
a temporary folder with the static files beside them, and Chromium photographs those files
with networking off. The data is the benchmark's synthetic dataset at a small scale (3,000
referrals in 130 countries, invented agencies), loaded into an empty database on first use.
Needs Debian's chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHOTS = [
    # file, path, window width, window height
    ("global.png", "/dashboards/", 1280, 1900),
    ("country.png", "/dashboards/country/AU", 1280, 2600),
    ("country-tablet.png", "/dashboards/country/AU", 820, 3400),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="sqlite:////tmp/shot.db")
    parser.add_argument("--scale", type=float, default=0.03)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args()

    from sqlalchemy import select

    from app.cli import upgrade_database
    from app.extensions import db
    from app.models import Agency
    from bench.bench_dashboards import PASSWORD, _make_app, _sign_in, generate

    upgrade_database(args.database_url)
    app = _make_app(args.database_url)
    with app.app_context():
        empty = db.session.scalar(select(Agency.id).limit(1)) is None
    if empty:
        generate(app, args.scale)
    client = _sign_in(app, "lead.manager@bench.example.org")
    assert PASSWORD  # the benchmark's sign-in

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is missing: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="handoff-shots-") as folder:
        site = Path(folder)
        shutil.copytree(ROOT / "app" / "static", site / "static")
        for name, path, width, height in SHOTS:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            html = response.get_data(as_text=True).replace('"/static/', '"static/')
            html = re.sub(r'href="/[^"]*"', 'href="#"', html)  # links lead nowhere in a picture
            page = site / (name.removesuffix(".png") + ".html")
            page.write_text(html)
            target = Path(args.out) / name
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={target}",
                            page.as_uri()], check=True, capture_output=True)
            print(f"{target} <- {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
