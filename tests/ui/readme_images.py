"""Copy the README's two console screenshots from the browser tests' output into docs/images/.

    ./run-tests tests/ui          # or: pytest tests/ui -k every_page (writes the screenshots)
    python tests/ui/readme_images.py

The tests write every page to tests/ui/screenshots/ (gitignored); the README shows two of
them, committed under docs/images/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "tests" / "ui" / "screenshots"
#: screenshot -> the README's image
README_IMAGES = {"overview.png": "console-overview.png", "cost.png": "console-cost.png"}


def main() -> int:
    target = REPO / "docs" / "images"
    target.mkdir(parents=True, exist_ok=True)
    for source, name in README_IMAGES.items():
        if not (SCREENSHOTS / source).is_file():
            print(f"no {SCREENSHOTS / source}: run the browser tests first "
                  "(pytest tests/ui -k every_page)", file=sys.stderr)
            return 1
        shutil.copyfile(SCREENSHOTS / source, target / name)
        print(f"{SCREENSHOTS / source} -> {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
