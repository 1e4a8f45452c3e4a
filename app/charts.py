"""Charts drawn on the server as SVG (no script, no library): the dashboard's daily series.
Pure: numbers in, markup out (escaped by construction: only numbers and fixed words)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

WIDTH, HEIGHT, PAD = 720, 220, 28


def daily_svg(days: Sequence[date], bars: Sequence[int], line: Sequence[int],
              bar_label: str = "clicks", line_label: str = "conversions") -> str:  # fmt: skip
    """Bars (clicks) and a line (conversions) per day, each on its own scale."""
    n = max(len(days), 1)
    step = (WIDTH - 2 * PAD) / n
    top_bar, top_line = max([*bars, 1]), max([*line, 1])
    label = f"{bar_label} and {line_label} per day"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{label}" class="chart">']  # fmt: skip
    base = HEIGHT - PAD
    for i, value in enumerate(bars):
        h = (base - PAD) * value / top_bar
        parts.append(f'<rect class="bar" x="{PAD + i * step + 1:.1f}" y="{base - h:.1f}" '
                     f'width="{max(step - 2, 1):.1f}" height="{h:.1f}"><title>{days[i]}: '
                     f'{value} {bar_label}</title></rect>')  # fmt: skip
    points = " ".join(f"{PAD + (i + 0.5) * step:.1f},{base - (base - PAD) * v / top_line:.1f}"
                      for i, v in enumerate(line))  # fmt: skip
    if points:
        parts.append(f'<polyline class="line" fill="none" points="{points}"/>')
    parts.append(f'<line class="axis" x1="{PAD}" y1="{base}" x2="{WIDTH - PAD}" y2="{base}"/>')
    if days:
        parts.append(f'<text x="{PAD}" y="{HEIGHT - 8}" class="tick">{days[0]}</text>')
        parts.append(f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end" '
                     f'class="tick">{days[-1]}</text>')  # fmt: skip
    parts.append(f'<text x="{PAD}" y="16" class="legend">▮ {bar_label} (max {top_bar}) '
                 f'— {line_label} (max {top_line})</text></svg>')  # fmt: skip
    return "".join(parts)
