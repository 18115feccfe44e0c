"""The evaluation report: per-item records, per-category and understanding/reasoning aggregates, JSON and a
markdown table with the paper's Table 1 rows beside ours (protocol named on every row)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from data_specs import spec_path

METRICS = ("psnr", "ssim", "lpips", "clip")
TABLE_METRICS = METRICS + ("ins_align",)
FOLLOWING = ("fg_change", "clip_direction", "vlm", "l1", "clip_i", "dino")
"""Instruction-following columns (model.evaluation.instruction_following)."""
RECORD_METRICS = METRICS + ("mse",) + FOLLOWING
METRIC_TITLES = {"psnr": "PSNR↑", "ssim": "SSIM↑", "lpips": "LPIPS↓", "clip": "CLIP↑", "ins_align": "Ins-align↑",
                 "fg_change": "FG change", "clip_direction": "CLIP-dir↑", "vlm": "VLM↑", "l1": "L1↓",
                 "clip_i": "CLIP-I↑", "dino": "DINO↑"}
NOT_COMPARABLE = ("corrected protocol: these rows are NOT comparable with the paper's Table 1, which was computed "
                  "with the released script (our `official` protocol)")
GROUPS = ("understanding", "reasoning")
PAPER_TABLE = spec_path("reason_edit_paper_table1.yaml")
REPORT_FORMAT = "smartedit-reason-edit-report-v1"


class PaperScores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    psnr: float
    ssim: float
    lpips: float
    clip: float
    ins_align: float


class PaperRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str
    understanding: PaperScores
    reasoning: PaperScores


class PaperTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    protocol: str
    rows: list[PaperRow]


def load_paper_table(path: Path | str = PAPER_TABLE) -> PaperTable:
    """The paper's Table 1 from its YAML file, validated."""
    path = Path(path)
    try:
        return PaperTable.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except Exception as err:
        raise ValueError(f"{path}: not a valid paper table ({err})") from err


@dataclass
class ItemScores:
    """Metrics of one (item, seed). None: not computed (missing weights, no background, no CLIP text, no target)."""

    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    clip: float | None = None
    mse: float | None = None
    """Background mean squared error (data range 1) behind ``psnr``, kept for the pooled-error PSNR."""
    fg_change: float | None = None
    """Mean absolute change inside the edit region, [0, 1] (0 = the region was left as it was)."""
    clip_direction: float | None = None
    """CLIP directional similarity of the edit-region crop, [-1, 1]."""
    vlm: float | None = None
    """Local VLM judge: VIEScore-style overall score sqrt(SC · PQ) / 10, [0, 1]."""
    l1: float | None = None
    """MagicBrush L1 between output and target image, [0, 1] (lower is better)."""
    clip_i: float | None = None
    """MagicBrush CLIP-I: cosine of CLIP image embeddings of output and target."""
    dino: float | None = None
    """MagicBrush DINO: cosine of DINOv2 embeddings of output and target."""
    notes: list[str] = field(default_factory=list)



@dataclass(kw_only=True)
class ItemRecord(ItemScores):
    """Scores of one benchmark item under one seed, with what identifies it in the report."""

    key: str
    category: str
    group: str
    seed: int
    instruction: str
    clip_text: str | None
    output: str
    """Edited image, relative to the report directory."""
    input: str | None = None
    """Input image as given to the editor (256 px copy), relative to the report directory."""


@dataclass
class Aggregate:
    """Means over (item, seed) records with a value; ``missing`` counts records without one, per metric.

    PSNR beside its capped mean: ``psnr_pooled`` is the PSNR of the pooled background error (mean of the items'
    MSE; +inf only if every background is identical), ``psnr_median`` the median of the capped values and
    ``psnr_capped`` how many values were capped (identical backgrounds)."""

    n: int
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    clip: float | None = None
    ins_align: float | None = None
    fg_change: float | None = None
    clip_direction: float | None = None
    vlm: float | None = None
    l1: float | None = None
    clip_i: float | None = None
    dino: float | None = None
    psnr_pooled: float | None = None
    psnr_median: float | None = None
    psnr_capped: int = 0
    missing: dict[str, int] = field(default_factory=dict)


def aggregate(records: list[ItemRecord]) -> Aggregate:
    agg = Aggregate(n=len(records))
    for metric in METRICS + FOLLOWING:
        values = [getattr(r, metric) for r in records if getattr(r, metric) is not None]
        setattr(agg, metric, statistics.fmean(values) if values else None)
        if len(values) < len(records) and (metric in METRICS or values):
            agg.missing[metric] = len(records) - len(values)
    psnrs = [r.psnr for r in records if r.psnr is not None]
    if psnrs:
        agg.psnr_median = statistics.median(psnrs)
    agg.psnr_capped = sum(any("psnr capped" in n for n in r.notes) for r in records)
    mses = [r.mse for r in records if r.mse is not None]
    if mses:
        pooled = statistics.fmean(mses)
        agg.psnr_pooled = math.inf if pooled == 0 else 10 * math.log10(1.0 / pooled)
    return agg


@dataclass
class EvaluationReport:
    protocol: str
    model: str
    benchmark: str
    seeds: list[int]
    records: list[ItemRecord]
    categories: dict[str, Aggregate] = field(default_factory=dict)
    groups: dict[str, Aggregate] = field(default_factory=dict)
    seed_std: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per group: standard deviation across seeds of the per-seed means (only with two or more seeds)."""
    flags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """What makes two evaluations comparable (model.evaluation.comparability.SETTING_KEYS)."""
    page_id: str = ""
    """The Ins-align judging page's id; judgement exports from another page are refused."""
    ins_align_coverage: dict[str, int] = field(default_factory=dict)
    """{"judged": (item, seed) pairs with a verdict, "total": pairs on the page}."""
    format: str = REPORT_FORMAT

    @classmethod
    def from_records(cls, records: list[ItemRecord], **kwargs: Any) -> EvaluationReport:
        report = cls(records=records, **kwargs)
        report.recompute()
        return report

    def recompute(self) -> None:
        """Fill categories, groups and seed_std from the records (keeps Ins-align figures already set)."""
        ins = {g: a.ins_align for g, a in self.groups.items()}
        ins_cat = {c: a.ins_align for c, a in self.categories.items()}
        by_cat: dict[str, list[ItemRecord]] = {}
        by_group: dict[str, list[ItemRecord]] = {}
        for r in self.records:
            by_cat.setdefault(r.category, []).append(r)
            by_group.setdefault(r.group, []).append(r)
        self.categories = {c: aggregate(rs) for c, rs in by_cat.items()}
        self.groups = {g: aggregate(rs) for g, rs in by_group.items()}
        for name, agg in self.categories.items():
            agg.ins_align = ins_cat.get(name)
        for name, agg in self.groups.items():
            agg.ins_align = ins.get(name)
        self.seed_std = {}
        if len(self.seeds) > 1:
            for group, rs in by_group.items():
                per_seed = [aggregate([r for r in rs if r.seed == s]) for s in self.seeds]
                self.seed_std[group] = {
                    m: statistics.stdev(vals)
                    for m in METRICS
                    if len(vals := [getattr(a, m) for a in per_seed if getattr(a, m) is not None]) > 1
                }

    def set_ins_align(self, groups: dict[str, float | None], categories: dict[str, float | None],
                      judged: int | None = None) -> None:
        if judged is not None:
            self.ins_align_coverage = {"judged": judged, "total": len(self.records)}
        for name, value in groups.items():
            if name in self.groups:
                self.groups[name].ins_align = value
        for name, value in categories.items():
            if name in self.categories:
                self.categories[name].ins_align = value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: Path | str) -> Path:
        path = Path(path)
        # JSON has no infinity: a pooled PSNR of identical backgrounds is written as the string "inf"
        path.write_text(json.dumps(_json_safe(self.to_dict()), indent=1, ensure_ascii=False, allow_nan=False),
                        encoding="utf-8")
        return path

    @classmethod
    def read_json(cls, path: Path | str) -> EvaluationReport:
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != REPORT_FORMAT:
            raise ValueError(f"{path}: field 'format' is {data.get('format')!r}, expected {REPORT_FORMAT!r}")
        data["records"] = [ItemRecord(**r) for r in data["records"]]
        data["categories"] = {k: Aggregate(**_inf_back(v)) for k, v in data["categories"].items()}
        data["groups"] = {k: Aggregate(**_inf_back(v)) for k, v in data["groups"].items()}
        return cls(**data)

    def to_markdown(self, paper: PaperTable | None = None) -> str:
        paper = paper if paper is not None else load_paper_table()
        lines = [
            f"# Reason-Edit evaluation — protocol `{self.protocol}`",
            "",
            f"- model: `{self.model}`",
            f"- benchmark: `{self.benchmark}` ({len({r.key for r in self.records})} items, seeds {self.seeds})",
        ]
        if self.protocol == "corrected":
            lines.append(f"- **note:** {NOT_COMPARABLE}")
        lines += [f"- **note:** {flag}" for flag in self.flags]
        capped = sum(any("psnr capped" in n for n in r.notes) for r in self.records)
        with_psnr = sum(r.psnr is not None for r in self.records)
        lines.append(f"- PSNR: {capped} of {with_psnr} values capped at {self.config.get('psnr_cap_db', 100.0):g} dB "
                     "(identical backgrounds); pooled-error PSNR and median are given beside the capped mean below")
        cov = self.ins_align_coverage
        lines.append(f"- Ins-align coverage: {cov['judged']} of {cov['total']} (item, seed) pairs judged" if cov
                     else f"- Ins-align coverage: 0 of {len(self.records)} (item, seed) pairs judged (page id "
                          f"`{self.page_id}`)")
        if self.settings:
            lines += ["", "## Run settings", "", "| setting | value |", "|---|---|"]
            lines += [f"| {k} | `{_setting(v)}` |" for k, v in self.settings.items()]
        header = ["Method", "Protocol"] + [f"{g[0].upper()} {METRIC_TITLES[m]}" for g in GROUPS for m in TABLE_METRICS]
        lines += [
            "",
            f"## Table 1 (U = understanding, R = reasoning; paper rows: {paper.source}, protocol `{paper.protocol}`)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in paper.rows:
            cells = [f"{row.method} (paper)", f"paper ({paper.protocol})"]
            cells += [_fmt(getattr(getattr(row, g), m)) for g in GROUPS for m in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        protocol_cell = f"**{self.protocol}**" + (" (not comparable)" if self.protocol != paper.protocol else "")
        ours = [f"**ours: {Path(self.model).name or self.model}**", protocol_cell]
        for g in GROUPS:
            agg = self.groups.get(g)
            ours += [_fmt(getattr(agg, m) if agg else None) for m in TABLE_METRICS]
        lines.append("| " + " | ".join(ours) + " |")
        if self.seed_std:
            lines += ["", "Standard deviation across seeds: " + "; ".join(
                f"{g}: " + ", ".join(f"{m} {v:.3f}" for m, v in stds.items()) for g, stds in self.seed_std.items()
            )]
        follow_header = ["Group", "n", "PSNR capped mean", "PSNR pooled", "PSNR median", "capped"] + [
            METRIC_TITLES[m] for m in FOLLOWING]
        lines += ["", "## Instruction following and PSNR robustness (beside Table 1; FG change = mean |Δ| inside the "
                  "mask, [0, 1]; L1/CLIP-I/DINO need target images)", "",
                  "| " + " | ".join(follow_header) + " |", "|" + "---|" * len(follow_header)]
        for name, agg in self.groups.items():
            cells = [name, str(agg.n), _fmt(agg.psnr), _fmt(agg.psnr_pooled), _fmt(agg.psnr_median), str(agg.psnr_capped)]
            lines.append("| " + " | ".join(cells + [_fmt(getattr(agg, m)) for m in FOLLOWING]) + " |")
        cat_header = ["Category", "Group", "n"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
        lines += ["", "## Per category", "", "| " + " | ".join(cat_header) + " |", "|" + "---|" * len(cat_header)]
        group_of = {r.category: r.group for r in self.records}
        for name, agg in self.categories.items():
            cells = [name, group_of.get(name, ""), str(agg.n)] + [_fmt(getattr(agg, m)) for m in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        missing = {c: a.missing for c, a in self.categories.items() if a.missing}
        if missing:
            lines += ["", "Records without a value (n/a columns or undefined items, see notes in report.json): "
                      + "; ".join(f"{c}: {m}" for c, m in missing.items())]
        return "\n".join(lines) + "\n"


def _setting(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _inf_back(agg: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if v in ("inf", "-inf") else v) for k, v in agg.items()}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.3f}"  # three decimals for every metric, as Table 1 prints them
