"""One self-contained HTML page of a recorded step: inline CSS and JS, no network, no external assets.

Per inspected completion: the problem and its verdict, the teacher's context folded above (the privileged text
marked; the first row's unfolded), the student's prompt folded, then the completion with each token shaded by its
divergence D_t (red, white at 0; blue for the negative values an element clip can leave), clipped tokens
underlined, positions without loss greyed, the first arithmetic / answer error boxed and the first large
disagreement marked. Hovering a token shows, in the side panel, D_t with and without the clip and the teacher's and
the student's top alternatives; clicking pins it (`page.html#t=ROW.TOKEN` opens with one pinned). Above the rows:
the step's summary and a table of every recorded step.
"""

from __future__ import annotations

import html
import json

from sposd.inspect.records import TOP_SHARE, loss_positions, step_summary

RED, BLUE = (220, 38, 38), (37, 99, 235)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#111;background:#fff}
main{margin-right:330px;padding:16px 22px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:0}
.muted{color:#666} table{border-collapse:collapse;margin:6px 0} td,th{padding:2px 8px;text-align:right}
th{background:#f3f4f6} td:first-child,th:first-child{text-align:left}
.summary{background:#f9fafb;border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px;margin:10px 0}
.row{border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px;margin:12px 0}
.row.correct{border-left:5px solid #16a34a} .row.wrong{border-left:5px solid #9f1239}
details{margin:4px 0} summary{cursor:pointer;color:#374151}
pre.ctx{white-space:pre-wrap;word-break:break-word;background:#f9fafb;padding:6px;margin:4px 0;font:12px monospace}
mark.priv{background:#fde68a;outline:1px solid #d97706}
.comp{font:15px/2.0 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;margin-top:6px}
.tok{cursor:pointer;border-radius:2px;padding:1px 0}
.tok.clip{text-decoration:underline 2px #7c3aed}
.tok.off{color:#9ca3af}
.tok.err{outline:2px solid #111;outline-offset:1px}
.tok.large::before{content:"\\25BC";font-size:9px;color:#111;position:relative;top:-0.9em;margin-right:-0.55em}
.tok.sel{box-shadow:0 0 0 2px #2563eb}
#panel{position:fixed;right:0;top:0;width:310px;height:100%;overflow:auto;border-left:1px solid #e5e7eb;
  background:#fff;padding:12px;box-sizing:border-box;font-size:13px}
#panel table{width:100%} .legend span{display:inline-block;width:22px;height:12px;vertical-align:middle}
"""

JS = """
const ROWS = JSON.parse(document.getElementById('rows-data').textContent);
let pinned = null;
function fmt(x){return (x===null||x===undefined)?'-':(Math.abs(x)>=0.01||x===0?x.toFixed(4):x.toExponential(2));}
function esc(s){return s.replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/\\n/g,'\\u21b5');}
function show(el){
  const r = ROWS[+el.dataset.r], t = +el.dataset.t;
  let h = '<h2>row ' + r.row + ', token ' + t + ': <code>' + esc(r.tokens[t]) + '</code></h2><table>';
  h += '<tr><td>D_t (loss)</td><td>' + fmt(r.div[t]) + '</td></tr>';
  h += '<tr><td>D_t without clip</td><td>' + fmt(r.div_raw[t]) + '</td></tr>';
  h += '<tr><td>clipped</td><td>' + r.clipped[t] + '</td></tr>';
  h += '<tr><td>loss weight</td><td>' + fmt(r.weight[t]) + '</td></tr>';
  h += '<tr><td>p student (token)</td><td>' + fmt(r.p_student[t]) + '</td></tr>';
  h += '<tr><td>p teacher (token)</td><td>' + fmt(r.p_teacher[t]) + '</td></tr></table>';
  h += '<table><tr><th>teacher</th><th>p</th><th>student</th><th>p</th></tr>';
  for (let k = 0; k < r.teacher_top[t].length; k++) {
    const a = r.teacher_top[t][k], b = r.student_top[t][k] || ['', null];
    h += '<tr><td><code>' + esc(a[0]) + '</code></td><td>' + fmt(a[1]) + '</td><td><code>' + esc(b[0]) +
         '</code></td><td>' + fmt(b[1]) + '</td></tr>';
  }
  document.getElementById('detail').innerHTML = h + '</table>';
}
function pin(el){
  if (pinned) pinned.classList.remove('sel');
  pinned = (pinned === el) ? null : el;
  if (pinned) { pinned.classList.add('sel'); show(el); }
}
document.querySelectorAll('.tok').forEach(el => {
  el.addEventListener('mouseenter', () => { if (!pinned) show(el); });
  el.addEventListener('click', () => pin(el));
});
const m = location.hash.match(/^#t=(\\d+)\\.(\\d+)$/);  // page.html#t=ROW.TOKEN opens with that token pinned
if (m) { const el = document.querySelector(`.tok[data-r="${m[1]}"][data-t="${m[2]}"]`); if (el) pin(el); }
"""


def shade(value: float, scale: float) -> tuple[int, int, int]:
    """Background of a token: white blended toward red (D_t > 0) or blue (D_t < 0) by |D_t| / scale, capped at 1."""
    a = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    target = RED if value >= 0 else BLUE
    return tuple(round(255 + a * (c - 255)) for c in target)  # type: ignore[return-value]


def color_scale(rows: list[dict]) -> float:
    """The |D_t| that gets the full colour: the largest over the step's positions with loss."""
    return max((abs(r["div"][t]) for r in rows for t in loss_positions(r)), default=0.0)


def render_page(rows: list[dict], *, step: int, run_dir: str, steps_table: list[tuple[int, dict]]) -> str:
    """The page of one step (module docstring)."""
    summary = step_summary(rows)
    scale = color_scale(rows)
    e = html.escape
    loss = rows[0]["loss"] if rows else {}
    clip = f"clip {loss.get('clip_max')} ({loss.get('clip_mode')})" if loss.get("clip_max") is not None else "no clip"
    head = (
        f"<h1>sposd inspect: step {step}</h1><div class='muted'>{e(run_dir)} &middot; "
        f"{e(str(loss.get('divergence', '?')))} on {e(str(loss.get('support', '?')))} support, {e(clip)}, "
        f"temperature {loss.get('temperature', '?')}</div>"
    )
    body = [head, _summary_html(summary, scale), _steps_html(steps_table, step)]
    if not rows:
        body.append("<p>No distilled completion was recorded at this step (no row had a teacher).</p>")
    for i, (row, info) in enumerate(zip(rows, summary["per_row"], strict=True)):
        body.append(_row_html(dict(row, _index=i), info, scale))
    data = json.dumps(
        [
            {
                k: r[k]
                for k in (
                    "row",
                    "tokens",
                    "div",
                    "div_raw",
                    "clipped",
                    "weight",
                    "p_student",
                    "p_teacher",
                    "teacher_top",
                    "student_top",
                )
            }
            for r in rows
        ],
        ensure_ascii=False,
    ).replace("</", "<\\/")
    panel = (
        "<aside id='panel'><div id='detail' class='muted'>Hover a token to see the teacher's and the student's "
        "alternatives; click to pin it.</div></aside>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sposd inspect step {step}</title>"
        f"<style>{CSS}</style></head><body><main>{''.join(body)}</main>{panel}"
        f"<script type='application/json' id='rows-data'>{data}</script><script>{JS}</script></body></html>\n"
    )


def _summary_html(s: dict, scale: float) -> str:
    lead = "-" if s["mean_lead"] is None else f"{s['mean_lead']:+.1f} tokens"
    legend = "".join(
        f"<span style='background:rgb{shade(v * scale, scale)}'></span>" for v in (-1.0, -0.5, 0.0, 1 / 3, 2 / 3, 1.0)
    )
    return (
        "<div class='summary' id='summary'><table>"
        f"<tr><td>rows / positions with loss</td><td>{s['rows']} / {s['positions']}</td></tr>"
        f"<tr><td>|D_t| mass on the top {TOP_SHARE:.0%} of tokens</td><td id='top5'>{s['top5_mass']:.3f}</td></tr>"
        f"<tr><td>fraction of tokens clipped</td><td id='clipped'>{s['clipped_frac']:.3f}</td></tr>"
        f"<tr><td>rows with a located arithmetic / answer error</td><td>{s['rows_with_error']}</td></tr>"
        f"<tr><td>first large disagreement at or before that error</td><td>{s['large_at_or_before_error']} of "
        f"{sum(r['lead'] is not None for r in s['per_row'])} (mean lead {lead})</td></tr>"
        f"</table><div class='legend muted'>D_t: {legend} &nbsp;-{scale:.3g} &hellip; 0 &hellip; {scale:.3g}; "
        "<u>underlined</u>: clipped; boxed: first error; &#9660;: first large disagreement (top 5%); grey: no loss"
        "</div></div>"
    )


def _steps_html(table: list[tuple[int, dict]], current: int) -> str:
    if len(table) < 2:
        return ""
    bold = " style='font-weight:bold'"
    lines = "".join(
        f"<tr{bold if step == current else ''}><td>{step}</td><td>{s['rows']}</td>"
        f"<td>{s['top5_mass']:.3f}</td><td>{s['clipped_frac']:.3f}</td><td>{s['div_sum']:.3g}</td></tr>"
        for step, s in table
    )
    return (
        "<details><summary>every recorded step</summary><table><tr><th>step</th><th>rows</th><th>top-5% mass</th>"
        f"<th>clipped</th><th>sum D_t</th></tr>{lines}</table></details>"
    )


def _row_html(row: dict, info: dict, scale: float) -> str:
    e = html.escape
    ctx, priv = row["teacher_context"], row.get("privileged")
    if priv:
        a, b = priv
        ctx_html = f"{e(ctx[:a])}<mark class='priv'>{e(ctx[a:b])}</mark>{e(ctx[b:])}"
    else:
        ctx_html = e(ctx)
    verdict = "correct" if row["correct"] else "wrong"
    head = (
        f"<h2>row {row['row']} (rank {row.get('rank', 0)}): {e(row['problem'])} &middot; answer {e(str(row['answer']))}"
        f" &middot; <span class='verdict'>{verdict}</span></h2><div class='muted'>reward {row['reward']:.3g}, "
        f"advantage {row['advantage']:+.3f}, distill weight {row['distill_weight']:.3g} on {row['distill_len']} "
        f"positions, group pass rate {row['group_pass_rate']:.2f}; first large disagreement at token "
        f"{_or_dash(info['first_large'])}, first error at token {_or_dash(info['first_error'])}</div>"
    )
    folds = (
        f"<details{' open' if row['_index'] == 0 else ''}><summary>teacher context (privileged text marked)</summary>"
        f"<pre class='ctx'>{ctx_html}</pre></details>"
        f"<details><summary>student prompt</summary><pre class='ctx'>{e(row['prompt'])}</pre></details>"
    )
    keep = set(loss_positions(row))
    spans = []
    for t, piece in enumerate(row["tokens"]):
        d = row["div"][t]
        cls = ["tok"]
        if t not in keep:
            cls.append("off")
        if row["clipped"][t] > 0:
            cls.append("clip")
        if t == info["first_error"]:
            cls.append("err")
        if t == info["first_large"]:
            cls.append("large")
        style = "" if t not in keep else f" style='background:rgb{shade(d, scale)}'"
        spans.append(f"<span class='{' '.join(cls)}' data-r='{row['_index']}' data-t='{t}'{style}>{e(piece)}</span>")
    return (
        f"<section class='row {verdict}' id='row-{row['_index']}'>{head}{folds}"
        f"<div class='comp'>{''.join(spans)}</div></section>"
    )


def _or_dash(x) -> str:
    return "-" if x is None else str(x)
