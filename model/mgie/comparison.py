"""One Reason-Edit report comparing SmartEdit and MGIE (or any evaluated pipelines), per group and per category,
beside both papers' published numbers.

Published numbers: SmartEdit's Table 1 (data_specs/reason_edit_paper_table1.yaml). MGIE (Fu et al., ICLR 2024)
evaluates on EVR, GIER, MA5k and MagicBrush only, and SmartEdit's Table 1 has no MGIE row, so no published
Reason-Edit figure exists for MGIE: its row says so for every metric rather than borrowing other benchmarks' numbers.

    from model.mgie.comparison import write_comparison
    write_comparison({"SmartEdit": "runs/s/eval/report.json", "MGIE": "runs/m/eval/report.json"}, "comparison.md")
"""

from __future__ import annotations

from pathlib import Path

from model.evaluation.report import GROUPS, METRIC_TITLES, TABLE_METRICS, EvaluationReport, PaperTable, _fmt, load_paper_table

MGIE_PUBLISHED_NOTE = (
    "MGIE (ICLR 2024) publishes no Reason-Edit numbers: its paper reports EVR, GIER, MA5k and MagicBrush, and "
    "SmartEdit's Table 1 has no MGIE row. Missing for MGIE: PSNR, SSIM, LPIPS, CLIP and Ins-align, for both the "
    "understanding and the reasoning group and for every category."
)


def comparison_markdown(reports: dict[str, EvaluationReport], paper: PaperTable | None = None) -> str:
    """Markdown: the group table (paper rows, MGIE's missing published row, then ours) and a per-category table
    with one row per (category, model)."""
    paper = paper if paper is not None else load_paper_table()
    protocols = sorted({r.protocol for r in reports.values()})
    header = ["Method", "Source"] + [f"{g[0].upper()} {METRIC_TITLES[m]}" for g in GROUPS for m in TABLE_METRICS]
    lines = [
        "# Reason-Edit: SmartEdit and MGIE",
        "",
        f"Ours: protocol {', '.join(f'`{p}`' for p in protocols)}; paper rows: {paper.source} (protocol "
        f"`{paper.protocol}`). U = understanding, R = reasoning.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in paper.rows:
        cells = [f"{row.method} (paper)", "SmartEdit Table 1"]
        cells += [_fmt(getattr(getattr(row, g), m)) for g in GROUPS for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| " + " | ".join(["MGIE-7B (paper)", "not reported"] + ["missing"] * (len(header) - 2)) + " |")
    for label, report in reports.items():
        cells = [f"**{label} (ours)**", f"`{Path(report.model).name or report.model}`"]
        for g in GROUPS:
            agg = report.groups.get(g)
            cells += [_fmt(getattr(agg, m) if agg else None) for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Published MGIE numbers:** {MGIE_PUBLISHED_NOTE}", ""]

    cat_header = ["Category", "Model", "n"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
    lines += ["## Per category", "", "| " + " | ".join(cat_header) + " |", "|" + "---|" * len(cat_header)]
    categories = sorted({c for r in reports.values() for c in r.categories})
    for category in categories:
        for label, report in reports.items():
            agg = report.categories.get(category)
            cells = [category, label, str(agg.n if agg else 0)]
            cells += [_fmt(getattr(agg, m) if agg else None) for m in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(report_jsons: dict[str, str | Path], out: str | Path) -> Path:
    """Read each model's report.json (model/evaluation) and write the comparison markdown to ``out``."""
    reports = {label: EvaluationReport.read_json(path) for label, path in report_jsons.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comparison_markdown(reports), encoding="utf-8")
    return out
