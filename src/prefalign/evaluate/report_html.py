"""`report.html`: one self-contained page (inline CSS and JS, figures embedded as base64 PNG, also saved in `plots/`).

Sections: what changed, the table, figures, win rates, held-out accuracy, per-instruction results, training curves,
and a browser of every prompt with each model's response and scores (search box and filters in plain JS).

Model output, prompts, labels and file names are untrusted text: every one goes through `html.escape` (quotes too,
so attributes are safe). The page embeds no data in <script>: the script only reads and hides elements of the page,
so no text from a model ever reaches JavaScript source.
"""

from __future__ import annotations

import base64
import html
from importlib import resources
from pathlib import Path

from ..data.records import Text
from ..fileio import write_text_atomic
from .metrics import REFUSAL_WINDOW, REPETITION_N
from .narrative import other_pairs_told_apart, what_changed
from .plots import constant_rows, model_colours, report_figures, training_figures
from .results import EvalReport, key_deltas, kl_coverage
from .stats import LEVEL, RESAMPLES, SEED, Estimate
from .table import CI_METHODS, Row, judge_label


def _asset(name: str) -> str:
    """The page's stylesheet or script, from the package's resources (inlined: the page is one self-contained file)."""
    return resources.files("prefalign").joinpath("resources", name).read_text(encoding="utf-8")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" loading="lazy">'


def _estimate(estimate: Estimate | None, digits: int = 3) -> str:
    if estimate is None:
        return '<span class="na">–</span>'
    return (
        f'<span class="v">{estimate.value:.{digits}f}</span> '
        f'<span class="ci">[{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]</span>'
    )


def _delta_cell(row: Row) -> str:
    delta, digits = row.delta, row.metric.digits
    if delta is None:
        return '<td class="delta"><span class="na">–</span></td>'
    css = "ns"
    if delta.excludes_zero:
        better = row.metric.higher_is_better
        css = "sig" if better is None else "good" if (delta.value > 0) == better else "bad"
    return (
        f'<td class="delta {css}"><span class="v">{delta.value:+.{digits}f}</span> '
        f'<span class="ci">[{delta.low:+.{digits}f}, {delta.high:+.{digits}f}]</span></td>'
    )


def _chip(label: str, colour: str) -> str:
    return f'<span class="chip"><span class="dot" style="background:{colour}"></span>{esc(label)}</span>'


def _text(prompt: Text) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def _summary(report: EvalReport) -> str:
    parts = []
    if report.delta_pair:
        model, baseline = report.delta_pair
        changes = [d for d in key_deltas(report, significant_only=True) if (d.model, d.baseline) == report.delta_pair]
        items = []
        for d in changes:
            css = "sig" if d.improved is None else "good" if d.improved else "bad"
            arrow = "▲" if d.estimate.value > 0 else "▼"
            digits = d.metric.digits
            items.append(
                f'<li class="{css}"><span class="arrow">{arrow}</span> {esc(d.metric.name)}: '
                f'<b>{d.estimate.value:+.{digits}f}</b> <span class="ci">[{d.estimate.low:+.{digits}f}, '
                f"{d.estimate.high:+.{digits}f}]</span></li>"
            )
        for r in report.pairwise:
            if (r.model, r.baseline) == report.delta_pair and r.win_rate is not None:
                items.append(
                    f"<li>Win rate of {esc(model)} over {esc(baseline)} ({esc(judge_label(r.judge))}): "
                    f"{_estimate(r.win_rate)}</li>"
                )
        body = "".join(items) or "<li>No metric changed with 95% confidence.</li>"
        parts.append(
            f'<div class="callout"><h3>What changed: {esc(model)} over {esc(baseline)}</h3>'
            f'<p class="muted">Changes whose 95% paired-bootstrap interval excludes zero.</p>'
            f"<ul>{body}</ul></div>"
        )
    return "".join(parts)


def _main_table(report: EvalReport) -> str:
    head = "".join(f"<th>{_chip(label, colour)}</th>" for label, colour in model_colours(report.labels).items())
    if report.delta_pair:
        model, baseline = report.delta_pair
        head += f"<th>Δ {esc(model)} over {esc(baseline)}<br><span class='muted'>95% CI</span></th>"
    body = []
    for row in report.rows:
        cells = "".join(f"<td>{_estimate(row.cells.get(label), row.metric.digits)}</td>" for label in report.labels)
        delta = _delta_cell(row) if report.delta_pair else ""
        method = esc(CI_METHODS[row.metric.kind])
        body.append(f'<tr><th scope="row" title="{method}">{esc(row.metric.name)}</th>{cells}{delta}</tr>')
    return f'<table class="results"><thead><tr><th>Metric</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _simple_table(header: list[str], rows: list[list[str]]) -> str:
    """A table whose cells are already HTML (callers escape text)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="plain"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _pairwise(report: EvalReport) -> str:
    if not report.pairwise:
        return ""
    rows = []
    for r in report.pairwise:
        c = r.counts
        rows.append(
            [
                esc(r.model),
                esc(r.baseline),
                f'<span title="{esc(r.judge)}">{esc(judge_label(r.judge))}</span>',
                _estimate(r.win_rate),
                _estimate(r.lc_win_rate),
                *(str(c[k]) for k in ("wins", "ties", "losses", "failures", "inconsistent")),
            ]
        )
    table = _simple_table(
        ["Model", "Baseline", "Judge", "Win rate", "LC win rate", "Wins", "Ties", "Losses", "Failed", "Inconsistent"],
        rows,
    )
    return (
        '<section id="pairwise"><h2>Pairwise win rates</h2><p class="muted">Ties count half. LLM judges are '
        "asked in both orders; a verdict that flips with the order is a tie (inconsistent). LC: length-"
        "controlled, the win rate at equal length from a logistic fit on the word-count difference.</p>"
        f"{table}</section>"
    )


def _heldout(report: EvalReport) -> str:
    if not report.heldout:
        return ""
    info = report.heldout_info
    rows = [
        [_scorer(report, h.scorer), _estimate(h.accuracy), _estimate(h.margin), str(h.accuracy.n if h.accuracy else 0)]
        for h in report.heldout
    ]
    if info["reference"]:
        dropped = f" ({info['dropped'] or 0} dropped by tokenization)"
        implicit = " Implicit reward: β·(log π/π<sub>ref</sub>(chosen) − log π/π<sub>ref</sub>(rejected))."
    else:
        dropped, implicit = "", " No implicit reward was computed (--no-implicit-reward)."
    return (
        f'<section id="heldout"><h2>Held-out preference accuracy</h2><p class="muted">{info["pairs"]} pairs '
        f"from <code>{esc(info['source'])}</code>{dropped}. Chosen ranked above rejected counts 1, a tie 0.5 "
        f"(RewardBench style).{implicit}</p>"
        f"{_simple_table(['Scorer', 'Accuracy', 'Mean margin', 'Pairs scored'], rows)}</section>"
    )


def _scorer(report: EvalReport, scorer: str) -> str:
    """A held-out scorer's name: a judge's short label (its full name on hover), or an implicit reward as it is."""
    if scorer in _judge_names(report):
        return f'<span title="{esc(scorer)}">{esc(judge_label(scorer))}</span>'
    return esc(scorer)


def _instructions(report: EvalReport) -> str:
    if not report.instructions:
        return ""
    rows = []
    for instruction, by_label in report.instructions.items():
        n = next((e["strict"].n for e in by_label.values() if "strict" in e), 0)
        rows.append(
            [
                f"<code>{esc(instruction)}</code>",
                str(n),
                *(_estimate(by_label.get(label, {}).get("strict")) for label in report.labels),
            ]
        )
    header = ["Instruction", "n", *(_chip(label, colour) for label, colour in model_colours(report.labels).items())]
    return (
        '<section id="instructions"><h2>Instruction following by instruction</h2><p class="muted">Strict '
        "accuracy per instruction id; Wilson intervals over its n instances.</p>"
        f"{_simple_table(header, rows)}</section>"
    )


def _figures(report: EvalReport, plots: Path) -> str:
    # The per-metric small multiples span the page; the IFEval and win-rate figures share a line.
    figures = "".join(
        f'<figure class="{"wide" if path.stem == "metrics" else ""}">{_image(path, title)}</figure>'
        for title, path in report_figures(report, plots)
    )
    same = [f"{esc(row.metric.name)}: {_same_value(row)}" for row in constant_rows(report)]
    note = f'<p class="muted">Not drawn, the same for every model: {"; ".join(same)}.</p>' if same else ""
    if not figures and not note:
        return ""
    return f'<section id="figures"><h2>Figures</h2><div class="figures">{figures}</div>{note}</section>'


def _same_value(row: Row) -> str:
    value = next(cell.value for cell in row.cells.values() if cell is not None)
    return f"{value:.{row.metric.digits}f}"


def _training(report: EvalReport, plots: Path) -> str:
    if not report.runs:
        return ""
    blocks = []
    for label, paths in training_figures(report.runs, plots / "training").items():
        images = "".join(f"<figure>{_image(p, f'{label}: {p.stem}')}</figure>" for p in paths)
        blocks.append(
            f"<h3>{esc(label)} <span class='muted'>{esc(report.runs[label])}</span></h3>"
            f'<div class="curves">{images}</div>'
        )
    return f'<section id="training"><h2>Training curves</h2>{"".join(blocks)}</section>'


def _response_card(report: EvalReport, index: int, colours: dict[str, str]) -> str:
    prompt = report.prompts[index]
    ids = prompt.instruction_ids
    tags = "".join(f'<span class="tag">{esc(i)}</span>' for i in ids)
    outcomes = set()
    columns = []
    for label in report.labels:
        generation, scores = report.generations[label][index], report.scores[label][index]
        badges = [f"{scores.tokens} tok", f"{scores.words} words"]
        checks = ""
        if scores.instructions is not None:
            passed = sum(c["strict"] for c in scores.instructions)
            outcomes.add(passed == len(scores.instructions))
            css = "ok" if passed == len(scores.instructions) else "fail"
            badges.append(f'<span class="{css}">{passed}/{len(scores.instructions)} strict</span>')
            checks = "".join(
                f'<li class="{"ok" if c["strict"] else "fail"}">{"✓" if c["strict"] else "✗"} {esc(c["id"])}</li>'
                for c in scores.instructions
            )
            checks = f'<ul class="checks">{checks}</ul>'
        if scores.refusal:
            badges.append('<span class="warn">refusal</span>')
        if scores.truncated:
            badges.append('<span class="warn">cut at limit</span>')
        if scores.repetition > 0:
            badges.append(f"rep {scores.repetition:.2f}")
        for name, score in scores.judges.items():
            if name.startswith("verifier"):  # already shown as the strict count and the check list
                continue
            value = "failed" if score.value is None else f"{score.value:.3g}"
            badges.append(f"{esc(judge_label(name))}: {esc(value)}")
        columns.append(
            f'<div class="resp" style="border-top-color:{colours[label]}"><div class="resp-head">'
            f"{_chip(label, colours[label])}<span class='badges'>{' · '.join(badges)}</span></div>{checks}"
            f'<pre class="text">{esc(generation.text) or "<span class=na>(empty)</span>"}</pre></div>'
        )
    verdicts = []
    for r in report.pairwise:
        outcome = r.outcomes[index]
        word = "failed" if outcome is None else {1.0: "wins", 0.5: "ties", 0.0: "loses"}[outcome]
        judge = f"<span class='muted'>({esc(judge_label(r.judge))})</span>"
        verdicts.append(f"{esc(r.model)} {word} vs {esc(r.baseline)} {judge}")
    footer = f'<footer class="verdicts">{" · ".join(verdicts)}</footer>' if verdicts else ""
    differ = "1" if len(outcomes) > 1 else "0"
    return (
        f'<article class="card" data-instructions="{esc(" ".join(ids))}" data-differ="{differ}">'
        f'<header><span class="pid">{esc(prompt.id)}</span>{tags}</header>'
        f'<pre class="prompt">{esc(_text(prompt.prompt))}</pre>'
        f'<div class="grid" style="grid-template-columns:repeat({len(report.labels)},minmax(0,1fr))">'
        f"{''.join(columns)}</div>{footer}</article>"
    )


def _browser(report: EvalReport) -> str:
    colours = model_colours(report.labels)
    cards = "".join(_response_card(report, i, colours) for i in range(len(report.prompts)))
    ids = sorted({i for p in report.prompts for i in p.instruction_ids})
    filters = ""
    if ids:
        options = "".join(f'<option value="{esc(i)}">{esc(i)}</option>' for i in ids)
        filters = (
            f'<select id="instruction"><option value="">All instructions</option>{options}</select>'
            '<label><input type="checkbox" id="differ"> Only prompts where the models differ (all '
            "instructions followed, strict)</label>"
        )
    return (
        '<section id="responses"><h2>Responses</h2><div class="controls">'
        '<input type="search" id="search" placeholder="Search prompts and responses…" aria-label="Search">'
        f'{filters}<span id="count" class="muted"></span></div>'
        f'<div id="cards">{cards}</div></section>'
    )


def _method(report: EvalReport) -> str:
    s = report.settings
    g = s["generation"]
    decoding = "greedy" if g["temperature"] == 0 else f"temperature {g['temperature']}, top-p {g['top_p']}"
    items = [
        f"Decoding: {esc(decoding)}, at most {g['max_new_tokens']} new tokens, seed {g['seed']}, prompt format "
        f"{esc(g['prompt_format'])}; the same for every model.",
        f"Intervals: {LEVEL:.0%}. Proportions: Wilson; means and ratios: percentile bootstrap over prompts "
        f"({RESAMPLES} resamples, seed {SEED}); Δ: paired bootstrap over prompts.",
        "IFEval: prompt-level = all of a prompt's instructions followed; instruction-level = instructions followed / "
        "instructions; loose forgives a preamble, a sign-off and markdown asterisks.",
        f"Refusal: a fixed phrase list in the first {REFUSAL_WINDOW} characters. Repetition: 1 − distinct/total word "
        f"{REPETITION_N}-grams.",
    ]
    if report.kl:
        kl = s["kl"]
        items.append(
            f"KL from {esc(kl['base'])}: exact next-token KL summed along {kl['samples_per_prompt']} "
            f"temperature-1 samples per prompt from the model (first {kl['max_new_tokens']} tokens), "
            f"nats per response{kl_coverage(report)}."
        )
    items += [esc(note) for note in report.notes]
    models = _simple_table(
        ["Label", "Spec", "Identity", "Answers generated / cached"],
        [
            [
                _chip(label, model_colours(report.labels)[label]),
                f"<code>{esc(report.models[label]['spec'])}</code>",
                f"<code>{esc(report.models[label]['identity'][:12])}</code>",
                f"{report.generation_counts.get(label, {}).get('generated', 0)} / "
                f"{report.generation_counts.get(label, {}).get('cached', 0)}",
            ]
            for label in report.labels
        ],
    )
    timings = _simple_table(["Stage", "Seconds"], [[esc(k), f"{v:.1f}"] for k, v in report.timings.items()])
    judges = _simple_table(
        ["Judge", "Spec"], [[esc(judge_label(name)), f"<code>{esc(name)}</code>"] for name in _judge_names(report)]
    )
    notes = "".join(f"<li>{item}</li>" for item in items)
    return (
        f'<section id="method"><h2>How this was measured</h2><ul class="notes">{notes}</ul>'
        f'<div class="two"><div><h3>Models</h3>{models}</div><div><h3>Wall time</h3>{timings}</div></div>'
        + (f"<h3>Judges</h3>{judges}" if _judge_names(report) else "")
        + "</section>"
    )


def _judge_names(report: EvalReport) -> list[str]:
    """Every judge's full name (spec), as the evaluation was asked for them."""
    return list(report.settings.get("judges", []))


def render_html(report: EvalReport, plots: Path) -> str:
    """The page; figures are written to `plots` and embedded."""
    title = f"Evaluation: {' vs '.join(report.labels)}"
    chips = "".join(
        _chip(f"{label} = {report.models[label]['spec']}", colour)
        for label, colour in model_colours(report.labels).items()
    )
    sections = [
        ("summary", "Summary"),
        ("figures", "Figures"),
        ("pairwise", "Win rates"),
        ("heldout", "Held-out pairs"),
        ("instructions", "Instructions"),
        ("training", "Training"),
        ("responses", "Responses"),
        ("method", "Method"),
        ("conclusion", "What changed"),
    ]
    paragraphs = "".join(
        f"<p>{esc(text)}</p>" for text in (what_changed(report), other_pairs_told_apart(report)) if text
    )
    body = {
        "summary": f'<section id="summary"><h2>Summary</h2>{_summary(report)}{_main_table(report)}'
        '<p class="muted">Value [95% interval]; hover a metric for its interval method. – : not '
        "applicable.</p></section>",
        "figures": _figures(report, plots),
        "pairwise": _pairwise(report),
        "heldout": _heldout(report),
        "instructions": _instructions(report),
        "training": _training(report, plots),
        "responses": _browser(report),
        "method": _method(report),
        "conclusion": f'<section id="conclusion"><h2>What changed</h2>{paragraphs}</section>' if paragraphs else "",
    }
    nav = "".join(f'<a href="#{key}">{name}</a>' for key, name in sections if body[key])
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{_asset('report.css')}</style></head><body><header class='top'><div class='wrap'><h1>{esc(title)}</h1>"
        f"<p class='muted'>{len(report.prompts)} prompts from <code>{esc(report.settings['prompts'])}</code></p>"
        f"<div class='chips'>{chips}</div><nav>{nav}</nav></div></header>"
        f"<main class='wrap'>{''.join(body[key] for key, _ in sections)}</main>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def write_html(report: EvalReport, path: Path) -> Path:
    write_text_atomic(path, render_html(report, path.parent / "plots"))
    return path
