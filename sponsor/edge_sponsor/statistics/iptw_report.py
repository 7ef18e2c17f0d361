"""The propensity-weighted study's part of the statistics report: the arms' weights, the
balance table and the love plot (edge_sponsor.statistics.report puts them on the page with the
propensity model, the weighted Kaplan-Meier chart and the weighted Cox model).

The love plot shows each covariate's standardised mean difference between the arms before
(open circle) and after (filled) weighting, with dashed lines at ± the threshold (0.1 by
default, the usual bar for balance): the picture a reviewer of an external-control study
checks first. Every string is escaped, as everywhere in the report.
"""

from __future__ import annotations

import math
from html import escape

from edge_sponsor.statistics.iptw import Balance, BalanceRow
from edge_sponsor.statistics.iptw_analysis import IptwAnalysis

LOVE_LABELS = 220
LOVE_PLOT = 520
LOVE_ROW = 22
LOVE_TOP = 30
LOVE_NAME_CHARACTERS = 30
# The axis reaches at least this far each side of 0, further when a difference does (to 2 at most).
LOVE_MIN_REACH = 0.25
LOVE_MAX_REACH = 2.0


def iptw_intro(analysis: IptwAnalysis) -> str:
    """What was compared and how the weights were made."""
    control, treated = analysis.arms
    estimand = (
        "the average treatment effect in the whole cohort (ATE: a treated patient weighs 1/e, a control 1/(1 - e))"
        if analysis.estimand == "ate"
        else "the treatment's effect on the treated (ATT: a treated patient weighs 1, a control e/(1 - e))"
    )
    return (
        "<h2>Propensity-weighted comparison</h2>"
        f"<p>Treatment <strong>{escape(analysis.treatment)}</strong>: {escape(treated)} against "
        f"{escape(control)}. Each hospital weighs its own patients by the propensity model below (e, the "
        f"probability of {escape(treated)} given the covariates), to estimate {escape(estimand)}; every weight is "
        f"cut at {escape(f'{analysis.max_weight:g}')}. The propensity coefficients sent were "
        f"{escape(', '.join(f'{g:.4g}' for g in analysis.propensity_coefficients))} (design scale). Noise "
        f"multipliers: {escape(f'{analysis.noise_multiplier:g}')} for the propensity and Cox models' rounds, "
        f"{escape(f'{analysis.balance_noise_multiplier:g}')} for the balance, "
        f"{escape(f'{analysis.survival_noise_multiplier:g}')} for the survival curves; every task was charged at "
        "its site.</p>"
        + (f'<p class="warning">The study stopped: {escape(analysis.stopped)}.</p>' if analysis.stopped else "")
    )


def balance_html(balance: Balance) -> str:
    """The arms' weights, the balance table and the love plot."""
    arms = "".join(
        f'<tr><td>{escape(arm.label)}</td><td class="num">{escape(_g(arm.count, "{:.0f}"))}</td>'
        f'<td class="num">{escape(_g(arm.without_weight, "{:.0f}"))}</td>'
        f'<td class="num">{escape(_g(arm.weight_sum, "{:.1f}"))}</td>'
        f'<td class="num">{escape(_g(arm.effective_sample_size, "{:.1f}"))}</td></tr>'
        for arm in balance.arms
    )
    text = [
        "<h3>Weights per arm</h3>",
        '<table id="iptw-arms"><thead><tr><th>Arm</th><th>Patients (noisy)</th><th>Without a weight</th>'
        "<th>Sum of weights</th><th>Effective sample size</th></tr></thead><tbody>" + arms + "</tbody></table>",
        '<p class="note">A patient lacking a covariate of the propensity model has no weight and is in no weighted '
        "number. The effective sample size, (Σw)²/Σw², is how many unweighted patients would carry as much "
        "information: far below the arm's size, a few patients carry large weights.</p>",
        f"<h3>Balance (standardised mean differences, threshold {escape(f'{balance.threshold:g}')})</h3>",
        love_plot(balance),
        _balance_table(balance),
        '<p class="note">Standardised mean difference: treated minus control, over the square root of the mean of '
        "the two arms' unweighted variances, before and after weighting alike (Austin 2009). The privacy noise "
        "moves each by about its noise SD shown; a difference after weighting is marked when it exceeds the threshold "
        "by more than two noise SDs (beyond what the noise explains).</p>",
    ]
    if balance.sites_left_out:
        text.append(
            f'<p class="warning">Left out of some estimates (a number withheld): '
            f"{escape(', '.join(balance.sites_left_out))}.</p>"
        )
    return "\n".join(text)


def _balance_table(balance: Balance) -> str:
    control, treated = (arm.label for arm in balance.arms)
    heads = (
        "Covariate",
        f"{control} before",
        f"{treated} before",
        "SMD before",
        f"{control} after",
        f"{treated} after",
        "SMD after",
        "In the propensity model",
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return (
        f'<table id="iptw-balance"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(_balance_row(row) for row in balance.rows)
        + "</tbody></table>"
    )


def _balance_row(row: BalanceRow) -> str:
    form = "{:.3g}" if row.category is None else "{:.1%}"
    flag = ' class="num warning"' if row.imbalanced_after else ' class="num"'
    cells = [
        f"<td>{escape(row.name)}</td>",
        f'<td class="num">{escape(_g(row.control_before, form))}</td>',
        f'<td class="num">{escape(_g(row.treated_before, form))}</td>',
        f'<td class="num">{escape(_smd(row.smd_before, row.smd_before_noise_sd))}</td>',
        f'<td class="num">{escape(_g(row.control_after, form))}</td>',
        f'<td class="num">{escape(_g(row.treated_after, form))}</td>',
        f"<td{flag}>{escape(_smd(row.smd_after, row.smd_after_noise_sd))}</td>",
        f"<td>{'yes' if row.in_propensity_model else 'no'}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def love_plot(balance: Balance) -> str:
    """An SVG love plot: per row, the difference before (open circle) and after (filled) weighting
    on a shared axis with dashed lines at ± the threshold; a difference past the axis is drawn at
    its edge with an arrowhead, one not estimable is said so."""
    rows = balance.rows
    finite = [abs(v) for row in rows for v in (row.smd_before, row.smd_after) if math.isfinite(v)]
    reach = min(LOVE_MAX_REACH, max([LOVE_MIN_REACH, balance.threshold * 1.5, *finite]))
    reach = math.ceil(reach * 10) / 10

    def x_of(value: float) -> float:
        clipped = max(-reach, min(reach, value))
        return LOVE_LABELS + (clipped + reach) / (2 * reach) * LOVE_PLOT

    bottom = LOVE_TOP + LOVE_ROW * len(rows)
    width = LOVE_LABELS + LOVE_PLOT + 40
    height = bottom + 48
    parts = [
        f'<svg id="love-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Love plot: standardised mean differences before and after weighting">'
    ]
    step = 0.1 if reach <= 0.5 else 0.25 if reach <= 1.0 else 0.5
    tick = -math.floor(reach / step) * step
    while tick <= reach + 1e-9:
        x = x_of(tick)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{LOVE_TOP - 8}" x2="{x:.1f}" y2="{bottom}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{escape(f"{tick:.2g}")}</text>')
        tick += step
    zero = x_of(0.0)
    parts.append(f'<line class="null" x1="{zero:.1f}" y1="{LOVE_TOP - 8}" x2="{zero:.1f}" y2="{bottom}"/>')
    for side in (-1, 1):
        x = x_of(side * balance.threshold)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{LOVE_TOP - 8}" x2="{x:.1f}" y2="{bottom}"/>')
    parts.append(
        f'<text x="{LOVE_LABELS + LOVE_PLOT / 2:.1f}" y="{bottom + 36}" text-anchor="middle">'
        "standardised mean difference (treated minus control): ○ before, ● after weighting</text>"
    )
    for index, row in enumerate(rows):
        y = LOVE_TOP + LOVE_ROW * index + LOVE_ROW / 2
        name = row.name if len(row.name) <= LOVE_NAME_CHARACTERS else row.name[: LOVE_NAME_CHARACTERS - 1] + "…"
        parts.append(
            f'<text x="{LOVE_LABELS - 10}" y="{y + 4:.1f}" text-anchor="end"><title>{escape(row.name)}</title>'
            f"{escape(name)}</text>"
        )
        if not (math.isfinite(row.smd_before) or math.isfinite(row.smd_after)):
            parts.append(f'<text x="{zero + 8:.1f}" y="{y + 4:.1f}">not estimable</text>')
            continue
        # The filled 'after' dot first, the open 'before' ring over it: both stay visible when they meet.
        for value, kind in ((row.smd_after, "after"), (row.smd_before, "before")):
            if not math.isfinite(value):
                continue
            x = x_of(value)
            if abs(value) > reach:
                sign = 1 if value > 0 else -1
                parts.append(
                    f'<path class="{kind}" d="M{x + 7 * sign:.1f},{y:.1f} L{x:.1f},{y - 5:.1f} '
                    f'L{x:.1f},{y + 5:.1f} Z"><title>{escape(f"{value:+.3f}")}</title></path>'
                )
            else:
                parts.append(
                    f'<circle class="{kind}" cx="{x:.1f}" cy="{y:.1f}" r="5">'
                    f"<title>{escape(f'{kind}: {value:+.3f}')}</title></circle>"
                )
    parts.append("</svg>")
    return "".join(parts)


LOVE_CSS = """
#love-plot{display:block}
#love-plot text{font-size:12px;fill:#1d2430}
#love-plot .grid{stroke:#e6e9ef;stroke-width:1}
#love-plot .null{stroke:#1d2430;stroke-width:1}
#love-plot .threshold{stroke:#d62728;stroke-width:1;stroke-dasharray:4 3}
#love-plot .before{fill:none;stroke:#6b7280;stroke-width:2}
#love-plot .after{fill:#1f77b4;stroke:#1f77b4;stroke-width:1}
td.warning{color:#b42318;font-weight:600}
"""


def _smd(value: float, noise_sd: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f} (± {noise_sd:.2g})" if math.isfinite(noise_sd) and noise_sd > 0 else f"{value:+.3f}"


def _g(value: float, form: str) -> str:
    return form.format(value) if math.isfinite(value) else "n/a"
