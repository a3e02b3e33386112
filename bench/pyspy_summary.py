"""Summarise a py-spy ``--format raw --threads`` profile: where each thread spends its time.

    python bench/pyspy_summary.py bench/results/costflux-single.pyspy.txt [--top 15]

Prints, per thread, its share of the samples, the functions with the most samples on top of
the stack (self), and the functions on the stack most often (inclusive).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*):\d+\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['func']} ({match['where']})" if match else frame


def summarise(path: Path, top: int = 15) -> str:
    self_time: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0]) if frames[0].startswith(
            "thread") else "?"
        names = [_name(frame) for frame in frames[1:]]
        totals[thread] += count
        if names:
            self_time[thread][names[-1]] += count
        for name in set(names):
            inclusive[thread][name] += count
    grand = sum(totals.values()) or 1
    out = [f"{path.name}: {grand} samples"]
    for thread, samples in totals.most_common():
        if samples < grand * 0.02:
            continue
        out.append(f"\n## {thread}: {samples} samples ({100 * samples / grand:.0f} %)")
        out.append("self:")
        for name, count in self_time[thread].most_common(top):
            out.append(f"  {100 * count / samples:5.1f} %  {name}")
        out.append("inclusive:")
        for name, count in inclusive[thread].most_common(top + 10):
            out.append(f"  {100 * count / samples:5.1f} %  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarise(args.profile, args.top))


if __name__ == "__main__":
    main()
