#!/usr/bin/env python3
"""Draws a result of the peer benchmark as an SVG bar chart of ratios to raw
tokio-postgres: one group per workload, one bar per library, the bar's height the
median over rounds of the same-round ratio, its whisker the middle half of the rounds.

    python3 chart.py [results/DATE.json] [-o results/peers.svg]

Without a file it takes the newest full result in results/. Standard library only.
"""

import argparse
import json
import pathlib
from xml.sax.saxutils import escape

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

# One colour per library, in the order the JSON lists them (baseline first, in grey).
COLOURS = ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]

BAR = 14  # width of one bar
GAP = 22  # space between workload groups
PLOT_HEIGHT = 300
LEFT, TOP, BOTTOM, RIGHT = 56, 80, 96, 16


def newest_full_result():
    full = sorted(p for p in RESULTS.glob("*.json") if "-" not in p.stem[10:])
    if not full:
        raise SystemExit(f"no full result in {RESULTS}; run the benchmark first")
    return full[-1]


def nice_ceiling(value):
    """The next half step above value, at least 1.5: the top of the y axis."""
    return max(1.5, (int(value * 2) + 1) / 2)


def chart(report):
    libraries = [lib["name"] for lib in report["libraries"]]
    versions = {lib["name"]: lib["version"] for lib in report["libraries"]}
    workloads = report["workloads"]
    group_width = BAR * len(libraries) + GAP
    width = LEFT + group_width * len(workloads) + RIGHT
    height = TOP + PLOT_HEIGHT + BOTTOM
    top = nice_ceiling(max(r["ratio_p75"] for w in workloads for r in w["results"]))

    def y(ratio):
        return TOP + PLOT_HEIGHT * (1 - ratio / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">'
        f"Time per operation relative to raw tokio-postgres (lower is faster)</text>",
        f'<text x="{LEFT}" y="34" fill="#555">'
        f"{escape(report['date'])}, {report['rounds']} rounds, PostgreSQL "
        f"{escape(report['environment']['postgres'])}, {report['environment']['cores']} cores "
        f"(load average at start {escape(report['environment']['load_before'])})</text>",
        f'<text x="{LEFT}" y="50" fill="#555">bar: median over rounds of the same-round ratio; '
        f"whisker: the middle half of the rounds; 1× is raw tokio-postgres</text>",
    ]
    # Legend.
    x = LEFT
    for i, name in enumerate(libraries):
        label = f"{name} {versions[name]}"
        out.append(f'<rect x="{x}" y="60" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + 14}" y="69">{escape(label)}</text>')
        x += 24 + 6.5 * len(label)
    # Y axis: gridlines every 0.5, the baseline at 1 drawn darker.
    steps = int(top * 2)
    for step in range(steps + 1):
        ratio = step / 2
        colour, dash = ("#333", "") if ratio == 1 else ("#ddd", "")
        out.append(
            f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y(ratio):.1f}" y2="{y(ratio):.1f}" '
            f'stroke="{colour}"{dash}/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{y(ratio) + 4:.1f}" text-anchor="end">{ratio:g}×</text>'
        )
    # Bars.
    for g, workload in enumerate(workloads):
        x0 = LEFT + GAP / 2 + g * group_width
        by_name = {r["library"]: r for r in workload["results"]}
        for i, name in enumerate(libraries):
            r = by_name.get(name)
            if r is None:
                continue
            x = x0 + i * BAR
            ratio = r["ratio_to_raw"]
            out.append(
                f'<rect x="{x:.1f}" y="{y(ratio):.1f}" width="{BAR - 2}" '
                f'height="{y(0) - y(ratio):.1f}" fill="{COLOURS[i % len(COLOURS)]}">'
                f"<title>{escape(name)} on {escape(workload['name'])}: {ratio:.2f}× "
                f"(median {r['median_us']:.1f} µs per operation)</title></rect>"
            )
            if name != libraries[0]:
                cx = x + (BAR - 2) / 2
                out.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(r["ratio_p25"]):.1f}" '
                    f'y2="{y(r["ratio_p75"]):.1f}" stroke="#222"/>'
                )
        label_x = x0 + (BAR * len(libraries)) / 2
        label_y = TOP + PLOT_HEIGHT + 12
        out.append(
            f'<text x="{label_x:.1f}" y="{label_y}" text-anchor="end" '
            f'transform="rotate(-35 {label_x:.1f} {label_y})">{escape(workload["name"])}</text>'
        )
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{y(0):.1f}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?", type=pathlib.Path, help="a results/*.json file")
    parser.add_argument("-o", "--output", type=pathlib.Path, default=RESULTS / "peers.svg")
    args = parser.parse_args()
    path = args.result or newest_full_result()
    report = json.loads(path.read_text())
    args.output.write_text(chart(report))
    print(f"wrote {args.output} from {path}")


if __name__ == "__main__":
    main()
