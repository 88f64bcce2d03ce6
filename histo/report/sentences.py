"""The sentences of a report: the high-grade verdict, each criterion's evidence, IHC calls and the case summary.

Pure functions of plain dicts (``SlideAssessment.to_dict()`` and contract-D ``ihc.json`` dicts), so
the HTML, the JSON and the case report all say the same thing in the same words, and tests can pin
every variant. Numbers are rounded for reading, but never so far that a value below its threshold
prints equal to it ("9.96 < 10", not "10 < 10").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

VERDICTS = ("yes", "no", "not_assessable")
#: The two markers whose joint positivity is stated as one sentence (a diagnostic pair for spindle-cell tumours).
CO_EXPRESSION_PAIR = ("S100", "CD34")


def fmt_num(value: float | None, decimals: int | None = None) -> str:
    """A number for people: integers without decimals, else 0–2 decimals by magnitude; None → 'n/a'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value)
    if decimals is None:
        if v == round(v):
            return str(int(round(v)))
        a = abs(v)
        decimals = 0 if a >= 100 else (1 if a >= 1 else (2 if a >= 0.01 else 4))
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_vs(value: float, threshold: float) -> tuple[str, str]:
    """Value and threshold as text, with enough decimals that a value off its threshold never prints equal."""
    t = fmt_num(threshold)
    v = fmt_num(value)
    decimals = 1
    while v == t and value != threshold and decimals <= 6:
        v = fmt_num(value, decimals)
        decimals += 1
    return v, t


def verdict_of(high_grade: bool | None) -> str:
    """'yes', 'no' or 'not_assessable' for the high-grade flag value."""
    return "not_assessable" if high_grade is None else ("yes" if high_grade else "no")


def verdict_word(verdict: str, *, upper: bool = False) -> str:
    """The verdict as written in a sentence: 'yes', 'no', 'not assessable' (upper-cased on request)."""
    word = verdict.replace("_", " ")
    return word.upper() if upper else word


def _criteria(assessment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(assessment["grading"]["high_grade"]["criteria"])


def _threshold(criterion: Mapping[str, Any]) -> float:
    th = criterion["evidence"]["thresholds"]
    key = "mitoses_min_per_10hpf" if criterion["name"] == "mitotic_activity" else "necrosis_min_pct"
    return float(th[key])


def _where(basis: str) -> str:
    """'in the hotspot' or 'over the whole viable tumour' from the evidence basis text."""
    return "in the hotspot" if basis.startswith("hotspot") else f"over the {basis}"


def fmt_area(area_mm2: float | None) -> str:
    """An area in mm² to three significant digits: 1.97, 0.237, 0.00237."""
    if area_mm2 is None or not area_mm2 > 0:
        return fmt_num(area_mm2)
    return fmt_num(area_mm2, max(0, 2 - math.floor(math.log10(area_mm2))))


def count_phrase(count: int | None, where: str | None, value: float | None, hpf_area_mm2: float | None,
                 value_text: str | None = None, noun: bool = True) -> str:
    """'12 mitoses in 1.97 mm² of viable tumour = 14.4 per 10 HPF (HPF 0.237 mm²)': a rate with what it rests on.

    ``where`` says what the count was counted in ('in 1.97 mm² of viable tumour'); without it, or
    without the count or HPF area (an old report), only the rate is written.
    """
    v = value_text if value_text is not None else fmt_num(value)
    if count is None or not where or not hpf_area_mm2:
        return f"{v} per 10 HPF"
    word = (" mitosis" if count == 1 else " mitoses") if noun else ""
    return f"{count}{word} {where} = {v} per 10 HPF (HPF {fmt_num(hpf_area_mm2, 4)} mm²)"


def tumour_where(area_mm2: float | None) -> str | None:
    """'in 1.97 mm² of viable tumour'."""
    return None if area_mm2 is None else f"in {fmt_area(area_mm2)} mm² of viable tumour"


def _hotspot_where(hs: Mapping[str, Any]) -> str | None:
    """What the hotspot count was counted in: the window, or the whole viable tumour."""
    if hs.get("counted_in") == "whole_viable_tumour":
        area = hs.get("counted_area_mm2")
        return None if area is None else f"in {fmt_area(area)} mm² of viable tumour (the whole viable tumour is the hotspot)"
    return f"in the {fmt_area(hs['area_mm2'])} mm² {hs['shape']} hotspot window ({fmt_num(hs['n_hpf'])} HPF)"


def hotspot_phrase(hs: Mapping[str, Any], value_text: str | None = None) -> str:
    """The hotspot figure with its raw count, counted area and HPF area (a measurements or report hotspot dict)."""
    if hs.get("per_10hpf") is None:
        return "n/a"
    return count_phrase(hs.get("count"), _hotspot_where(hs), hs.get("per_10hpf"), hs.get("hpf_area_mm2"), value_text)


def whole_tumour_phrase(mitoses: Mapping[str, Any], value_text: str | None = None) -> str:
    """The whole-tumour figure: 'N mitoses in A mm² of viable tumour = V per 10 HPF (HPF h mm²)'."""
    if mitoses.get("per_10hpf") is None:
        return "n/a"
    return count_phrase(mitoses.get("count"), tumour_where(mitoses.get("counted_area_mm2")), mitoses.get("per_10hpf"),
                        mitoses.get("hpf_area_mm2"), value_text)


def hotspot_note(hs: Mapping[str, Any]) -> str | None:
    """Why the hotspot is the whole viable tumour ('the viable tumour is smaller than …'), or None for a window."""
    if hs.get("counted_in") != "whole_viable_tumour":
        return None
    window = f"{fmt_num(hs['n_hpf'])}-HPF window ({fmt_area(hs['area_mm2'])} mm²)"
    if hs.get("window_exceeds_tumour"):
        why = f"the viable tumour is smaller than one {window}"
    else:
        why = f"no {window} is denser than the viable tumour as a whole"
    held = hs.get("window_count")
    return why if held is None else f"{why}; the densest window holds {held}"


def hotspot_label(hs: Mapping[str, Any]) -> str:
    """The short label drawn beside the hotspot outline."""
    if hs.get("counted_in") == "whole_viable_tumour":
        return (f"hotspot = whole viable tumour: {hs['count']} in {fmt_area(hs['counted_area_mm2'])} mm²; "
                f"densest {fmt_num(hs['n_hpf'])}-HPF window (outlined): {hs.get('window_count')}")
    return f"hotspot: {hs['count']} mitoses in {fmt_num(hs['n_hpf'])} HPF ({fmt_area(hs['area_mm2'])} mm²)"


def _mitotic_phrase(ev: Mapping[str, Any], value_text: str, noun: bool = True) -> str:
    """The mitotic evidence as 'N mitoses in A mm² of … = V per 10 HPF (HPF h mm²)'."""
    hs = ev.get("hotspot") or {}
    if ev["basis"].startswith("hotspot") and hs:
        where = _hotspot_where(hs)
    else:
        where = tumour_where(ev.get("counted_area_mm2"))
    if ev.get("count") is None or not where or not ev.get("hpf_area_mm2"):
        return f"{value_text} per 10 HPF {_where(ev['basis'])}"  # evidence without counts (older reports)
    return count_phrase(ev.get("count"), where, ev["value"], ev.get("hpf_area_mm2"), value_text, noun)


def mitotic_evidence_phrase(ev: Mapping[str, Any]) -> str:
    """A mitotic criterion's or score's evidence dict as 'N mitoses in A mm² of … = V per 10 HPF (HPF h mm²)'."""
    return "n/a" if ev.get("value") is None else _mitotic_phrase(ev, fmt_num(ev["value"]))


def criterion_phrase(criterion: Mapping[str, Any], *, short: bool = False) -> str:
    """One criterion as a phrase: 'mitotic activity 32 mitoses in a square window … = 32 per 10 HPF (HPF …) in the hotspot ≥ 10 (threshold)'.

    ``short`` gives the case-summary form ('mitoses … in the hotspot ≥ 10').
    """
    ev = criterion["evidence"]
    mitotic = criterion["name"] == "mitotic_activity"
    if short:
        name = "mitoses" if mitotic else "necrosis"
    else:
        name = "mitotic activity" if mitotic else "tumour necrosis"
    if criterion["passed"] is None or ev["value"] is None:
        return f"{name} not assessable: {criterion.get('reason') or 'no value'}"
    v, t = fmt_vs(float(ev["value"]), _threshold(criterion))
    op = "≥" if criterion["passed"] else "<"
    tail = "" if short else " (threshold)"
    if mitotic:
        return f"{name} {_mitotic_phrase(ev, v, noun=not short)} {op} {t}{tail}"
    return f"{name} {v} % {op} {t} %{tail}"


def verdict_line(assessment: Mapping[str, Any]) -> str:
    """The one-line verdict: 'High grade: YES — mitotic activity … per 10 HPF … in the hotspot ≥ 10 (threshold); …'."""
    hg = assessment["grading"]["high_grade"]
    verdict = verdict_of(hg["high_grade"])
    if hg.get("reason"):  # withheld: say why first, not a criterion list that reads like a result
        return f"High grade: {verdict_word(verdict, upper=True)} — {hg['reason']}"
    parts = [criterion_phrase(c) for c in _criteria(assessment)]
    return f"High grade: {verdict_word(verdict, upper=True)} — " + "; ".join(parts)


def criterion_sentence(criterion: Mapping[str, Any]) -> str:
    """One criterion as a full sentence with its count, counted area, HPF area, basis and hotspot location."""
    ev = criterion["evidence"]
    mitotic = criterion["name"] == "mitotic_activity"
    title = "Mitotic activity" if mitotic else "Tumour necrosis"
    if criterion["passed"] is None or ev["value"] is None:
        return f"{title}: not assessable — {criterion.get('reason') or 'no value'}."
    v, t = fmt_vs(float(ev["value"]), _threshold(criterion))
    met = "criterion met" if criterion["passed"] else "criterion not met"
    op = "≥" if criterion["passed"] else "<"
    if not mitotic:
        return f"{title}: {v} % of the tumour area is necrotic, {op} the threshold of {t} % — {met}."
    detail = []
    hs = ev.get("hotspot")
    if ev["basis"].startswith("hotspot") and hs:
        note = hotspot_note(hs)
        if note:
            detail.append(note)
        if hs.get("centre_x_um") is not None:
            x0, y0, x1, y1 = hs["box_um"]
            what = "densest window" if note else "window"
            detail.append(f"{what} centred at x {fmt_num(hs['centre_x_um'], 0)} µm, y {fmt_num(hs['centre_y_um'], 0)} µm; "
                          f"box x {fmt_num(x0, 0)}–{fmt_num(x1, 0)} µm, y {fmt_num(y0, 0)}–{fmt_num(y1, 0)} µm")
    tail = f" ({'; '.join(detail)})" if detail else ""
    return f"{title}: {_mitotic_phrase(ev, v)}{tail}, {op} the threshold of {t} — {met}."


def verdict_reasons(assessment: Mapping[str, Any]) -> list[str]:
    """The verdict's reasons as sentences: one per criterion, then what they add up to."""
    hg = assessment["grading"]["high_grade"]
    out = [criterion_sentence(c) for c in hg["criteria"]]
    verdict = verdict_of(hg["high_grade"])
    if verdict == "yes":
        out.append("High grade, because at least one criterion is met (rule: " + hg["rule"] + ").")
    elif verdict == "no":
        out.append("Not high grade: every criterion was assessed and none is met (rule: " + hg["rule"] + ").")
    elif hg.get("reason"):
        out.append(f"{hg['reason']}.")
    else:
        out.append("High grade is not assessable: no criterion is met and at least one could not be assessed.")
    return out


def high_grade_summary(assessment: Mapping[str, Any]) -> str:
    """The case-summary clause: 'High grade: yes (mitoses 32 mitoses in … = 32 per 10 HPF (HPF …) in the hotspot ≥ 10; necrosis 25 % ≥ 1 %).'."""
    hg = assessment["grading"]["high_grade"]
    verdict = verdict_of(hg["high_grade"])
    if hg.get("reason"):
        return f"High grade: {verdict_word(verdict)} ({hg['reason']})."
    parts = [criterion_phrase(c, short=True) for c in _criteria(assessment)]
    return f"High grade: {verdict_word(verdict)} ({'; '.join(parts)})."


# -- IHC (ihc.json dicts, docs/formats.md) ----------------------------------------------------------------------

def marker_key(name: str) -> str:
    """Marker name folded for matching: 'S-100' and 's100' are the same marker."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def ihc_label(ihc: Mapping[str, Any]) -> str:
    """The call label of an ihc.json dict ('positive', 'negative', 'insufficient_cells', 'index')."""
    call = ihc.get("call") or {}
    return str(call.get("label", "unknown")) if isinstance(call, Mapping) else str(call)


def _cells_word(ihc: Mapping[str, Any]) -> str:
    return "tumour cells" if ihc.get("region") == "tumour" else "cells"


def qc_names(ihc: Mapping[str, Any]) -> list[str]:
    """Names of the QC flags raised on an IHC slide (flags may be strings or dicts with a name)."""
    out = []
    for f in ihc.get("qc") or []:
        out.append(str(f.get("name", f)) if isinstance(f, Mapping) else str(f))
    return out


def ihc_evidence_phrase(ihc: Mapping[str, Any]) -> str:
    """'H-score 180; 72 % of tumour cells ≥ 1+'."""
    return (f"H-score {fmt_num(ihc.get('h_score'))}; {fmt_num(ihc.get('pct_positive'))} % of "
            f"{_cells_word(ihc)} ≥ 1+")


def ihc_sentence(ihc: Mapping[str, Any]) -> str:
    """One marker's result as a sentence: 'ALK positive (H-score 180; 72 % of tumour cells ≥ 1+).'."""
    marker = str(ihc.get("marker", "?"))
    label = ihc_label(ihc)
    if label in ("positive", "negative"):
        text = f"{marker} {label} ({ihc_evidence_phrase(ihc)})."
    elif label == "index":
        text = (f"{marker} index {fmt_num(ihc.get('pct_positive'))} % of {_cells_word(ihc)} ≥ 1+ "
                f"(H-score {fmt_num(ihc.get('h_score'))}; no positive/negative call).")
    elif label == "insufficient_cells":
        reason = (ihc.get("call") or {}).get("reason") if isinstance(ihc.get("call"), Mapping) else None
        text = f"{marker} not assessable: too few cells ({reason or str(ihc.get('n_cells', '?')) + ' cells scored'})."
    elif label == "no_tissue":
        text = f"{marker} not assessable: no tissue found on the slide."
    else:
        text = f"{marker}: no call ({label})."
    flags = qc_names(ihc)
    if flags:
        text += f" {marker} QC flag{'s' if len(flags) > 1 else ''}: {', '.join(flags)}."
    return text


def co_expression(ihc_results: Sequence[Mapping[str, Any]], pair: Sequence[str] = CO_EXPRESSION_PAIR) -> bool:
    """True when every marker of the pair has a result and every result of each is positive."""
    for name in pair:
        found = [r for r in ihc_results if marker_key(r.get("marker", "")) == marker_key(name)]
        if not found or any(ihc_label(r) != "positive" for r in found):
            return False
    return True


def ihc_summary(ihc_results: Sequence[Mapping[str, Any]], pair: Sequence[str] = CO_EXPRESSION_PAIR) -> list[str]:
    """One sentence per marker, in input order; S100 and CD34 become one co-expression sentence when both are positive."""
    joint = co_expression(ihc_results, pair)
    keys = {marker_key(p) for p in pair}
    out: list[str] = []
    for r in ihc_results:
        if joint and marker_key(r.get("marker", "")) in keys:
            continue
        out.append(ihc_sentence(r))
    if joint:
        names = [str(next(r for r in ihc_results if marker_key(r.get("marker", "")) == marker_key(p))["marker"])
                 for p in pair]
        detail = "; ".join(f"{n} {ihc_evidence_phrase(r)}" for n in names
                           for r in ihc_results if marker_key(r.get("marker", "")) == marker_key(n))
        sentence = f"{' and '.join(names)} co-expressed ({detail})."
        flags = [f"{r.get('marker')}: {', '.join(qc_names(r))}" for r in ihc_results
                 if marker_key(r.get("marker", "")) in keys and qc_names(r)]
        if flags:
            sentence += f" QC flags: {'; '.join(flags)}."
        out.append(sentence)
    return out


def case_sentence(he_assessment: Mapping[str, Any] | None, ihc_results: Sequence[Mapping[str, Any]] = ()) -> str:
    """The case summary: the high-grade clause, then the IHC sentences."""
    parts = [high_grade_summary(he_assessment)] if he_assessment is not None else ["High grade: no H&E assessment."]
    parts += ihc_summary(list(ihc_results))
    return " ".join(parts)
