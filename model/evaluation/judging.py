"""Ins-align, the paper's human judgement: the fraction of edits that follow the instruction.

``write_judging_page`` makes one self-contained HTML file (no server, no network) showing input, output and
instruction for each (item, seed) with two buttons, "follows" / "does not follow". Images are inlined as JPEG
thumbnails (``side`` px, quality 85: ~10 KB each instead of a full PNG).
The page carries a unique id (model fingerprint + benchmark hash + protocol, ``evaluate.judging_page_id``):
judgements persist in the browser's localStorage under that id, so a second model's page never starts with the
first one's verdicts, and are exported as a downloadable JSON file::

    {"format": "smartedit-ins-align-judgements-v1", "page_id": ..., "judge": ..., "exported_at": ...,
     "total": N, "judgements": [{"key", "seed", "category", "group", "follows": true|false}, ...],
     "unjudged": [{"key", "seed"}, ...]}

``ins_align`` turns one or more such files (several judges) into Ins-align per group and per category: each
(item, seed) scores the mean of its judges' verdicts, and a group's figure is the mean over its judged pairs.
Given the report's ``page_id`` it refuses exports made on another page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JUDGEMENTS_FORMAT = "smartedit-ins-align-judgements-v1"


@dataclass(frozen=True)
class JudgingEntry:
    """One card on the page."""

    key: str
    seed: int
    category: str
    group: str
    instruction: str
    input_image: Path
    output_image: Path


def _data_uri(path: Path, side: int) -> str:
    from PIL import Image

    with Image.open(path) as im:
        thumb: Image.Image = im.convert("RGB")
    thumb.thumbnail((side, side))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Ins-align judging: __TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1em; background: #f4f4f4; }
.card { background: white; margin: 0 0 1em 0; padding: .6em; border: 3px solid #ddd; display: flex; gap: 1em; align-items: center; }
.card.follows { border-color: #2a9d3a; } .card.not-follows { border-color: #c0392b; }
.card img { width: __SIDE__px; height: auto; }
.meta { max-width: 28em; } .instruction { font-size: 1.15em; margin: .4em 0 .8em 0; }
button.selected { font-weight: bold; outline: 2px solid black; }
#bar { position: sticky; top: 0; background: #f4f4f4; padding: .5em 0; z-index: 1; }
</style></head><body>
<div id="bar"><b>Does the output follow the instruction?</b>
 judge: <input id="judge" placeholder="your name" size="12">
 <span id="progress"></span>
 <button id="export">Export judgements (JSON)</button></div>
<div id="cards"></div>
<pre id="export-json" hidden></pre>
<script id="entries" type="application/json">__ENTRIES__</script>
<script>
"use strict";
const PAGE_ID = __PAGE_ID__;
const FORMAT = __FORMAT__;
const entries = JSON.parse(document.getElementById("entries").textContent);
const storeKey = "ins-align:" + PAGE_ID;
const verdicts = JSON.parse(localStorage.getItem(storeKey) || "{}");
const id = (e) => e.key + "#" + e.seed;

function render(card, e) {
  const v = verdicts[id(e)];
  card.classList.toggle("follows", v === true);
  card.classList.toggle("not-follows", v === false);
  card.querySelector(".yes").classList.toggle("selected", v === true);
  card.querySelector(".no").classList.toggle("selected", v === false);
}
function progress() {
  const done = entries.filter((e) => id(e) in verdicts).length;
  document.getElementById("progress").textContent = done + " / " + entries.length + " judged";
}
function judge(e, card, value) {
  verdicts[id(e)] = value;
  localStorage.setItem(storeKey, JSON.stringify(verdicts));
  render(card, e); progress();
}
const cards = document.getElementById("cards");
entries.forEach((e, i) => {
  const card = document.createElement("div");
  card.className = "card"; card.id = "card-" + i; card.dataset.key = e.key; card.dataset.seed = e.seed;
  const text = (cls, t) => { const d = document.createElement("div"); d.className = cls; d.textContent = t; return d; };
  const img = (src, alt) => { const im = document.createElement("img"); im.src = src; im.alt = alt; return im; };
  const meta = document.createElement("div"); meta.className = "meta";
  meta.append(text("category", e.category + " · seed " + e.seed), text("instruction", e.instruction));
  const yes = document.createElement("button"); yes.className = "yes"; yes.textContent = "follows";
  const no = document.createElement("button"); no.className = "no"; no.textContent = "does not follow";
  yes.addEventListener("click", () => judge(e, card, true));
  no.addEventListener("click", () => judge(e, card, false));
  meta.append(yes, document.createTextNode(" "), no);
  card.append(img(e.input, "input"), img(e.output, "output"), meta);
  cards.append(card); render(card, e);
});
progress();
document.getElementById("export").addEventListener("click", () => {
  const judged = entries.filter((e) => id(e) in verdicts);
  const data = {
    format: FORMAT, page_id: PAGE_ID, judge: document.getElementById("judge").value,
    exported_at: new Date().toISOString(), total: entries.length,
    judgements: judged.map((e) => ({key: e.key, seed: e.seed, category: e.category, group: e.group, follows: verdicts[id(e)]})),
    unjudged: entries.filter((e) => !(id(e) in verdicts)).map((e) => ({key: e.key, seed: e.seed})),
  };
  const text = JSON.stringify(data, null, 1);
  const pre = document.getElementById("export-json"); pre.textContent = text; pre.hidden = false;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  a.download = "ins_align_judgements_" + PAGE_ID + ".json";
  document.body.append(a); a.click(); a.remove();
});
</script></body></html>
"""


def write_judging_page(entries: list[JudgingEntry], path: Path | str, page_id: str, title: str = "", side: int = 256) -> Path:
    """The self-contained judging page at ``path``; ``page_id`` names its localStorage slot and export file."""
    if not entries:
        raise ValueError("write_judging_page: no entries to judge")
    payload = [
        {
            "key": e.key,
            "seed": e.seed,
            "category": e.category,
            "group": e.group,
            "instruction": e.instruction,
            "input": _data_uri(e.input_image, side),
            "output": _data_uri(e.output_image, side),
        }
        for e in entries
    ]
    # "</" inside the JSON would end the <script> block early; JSON allows the escaped form.
    entries_json = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    page = (
        _PAGE.replace("__TITLE__", html.escape(title or page_id))
        .replace("__SIDE__", str(side))
        .replace("__PAGE_ID__", json.dumps(page_id))
        .replace("__FORMAT__", json.dumps(JUDGEMENTS_FORMAT))
        .replace("__ENTRIES__", entries_json)
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


@dataclass
class InsAlign:
    """Ins-align per group and category; ``judged``/``judgements`` count (item, seed) pairs and verdicts."""

    groups: dict[str, float] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)
    judgements: int = 0
    judges: list[str] = field(default_factory=list)
    unjudged: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "categories": self.categories,
            "judged": self.judged,
            "judgements": self.judgements,
            "judges": self.judges,
            "unjudged": self.unjudged,
        }


def _load(source: Path | str | dict) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, "<judgements>"
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    return data, str(path)


def ins_align(sources: list[Path | str | dict], page_id: str | None = None) -> InsAlign:
    """Ins-align from judgement exports of the judging page (one file per judge, or several sessions).

    With ``page_id`` (the report's), an export made on any other page is refused: its verdicts are about another
    model, benchmark or protocol."""
    verdicts: dict[tuple[str, int], list[bool]] = {}
    where: dict[tuple[str, int], tuple[str, str]] = {}
    judged_anywhere: set[tuple[str, int]] = set()
    unjudged: set[tuple[str, int]] = set()
    result = InsAlign()
    for source in sources:
        data, name = _load(source)
        if data.get("format") != JUDGEMENTS_FORMAT:
            raise ValueError(f"{name}: field 'format' is {data.get('format')!r}, expected {JUDGEMENTS_FORMAT!r}")
        if page_id is not None and data.get("page_id") != page_id:
            raise ValueError(
                f"{name}: exported from judging page {data.get('page_id')!r}, but the report's page is {page_id!r} "
                "(another model, benchmark or protocol); judge this report's judging.html and export again"
            )
        result.judges.append(data.get("judge") or "anonymous")
        for i, j in enumerate(data.get("judgements", [])):
            if not isinstance(j.get("follows"), bool):
                raise ValueError(f"{name}: judgements[{i}].follows must be true or false, got {j.get('follows')!r}")
            pair = (str(j["key"]), int(j["seed"]))
            verdicts.setdefault(pair, []).append(j["follows"])
            where[pair] = (str(j["category"]), str(j["group"]))
            judged_anywhere.add(pair)
            result.judgements += 1
        unjudged.update((str(u["key"]), int(u["seed"])) for u in data.get("unjudged", []))
    result.unjudged = len(unjudged - judged_anywhere)
    by_group: dict[str, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for pair, votes in verdicts.items():
        score = statistics.fmean(votes)
        category, group = where[pair]
        by_group.setdefault(group, []).append(score)
        by_cat.setdefault(category, []).append(score)
    result.groups = {g: statistics.fmean(v) for g, v in sorted(by_group.items())}
    result.categories = {c: statistics.fmean(v) for c, v in sorted(by_cat.items())}
    result.judged = {g: len(v) for g, v in sorted(by_group.items())}
    return result


def format_ins_align(result: InsAlign) -> str:
    lines = [f"Ins-align from {result.judgements} judgements by {', '.join(result.judges)}"]
    lines += [f"  {g:<14} {v:.3f}  ({result.judged[g]} judged)" for g, v in result.groups.items()]
    lines += [f"    {c:<20} {v:.3f}" for c, v in result.categories.items()]
    if result.unjudged:
        lines.append(f"  {result.unjudged} (item, seed) pairs were not judged and are left out")
    return "\n".join(lines)
