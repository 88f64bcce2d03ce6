"""The HTML of slide and case reports: one self-contained file each (inline CSS, images as data URIs, no script).

Rendered from the report dicts (the same content as report.json), with plain functions rather than a
template engine: the pages are small, and every interpolated string passes through :func:`esc`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from histo.report.sentences import (
    fmt_area,
    fmt_num,
    hotspot_note,
    hotspot_phrase,
    ihc_label,
    ihc_sentence,
    mitotic_evidence_phrase,
    qc_names,
    whole_tumour_phrase,
)

DISCLAIMER = ("Research use only — not a diagnostic device; results must be checked by a pathologist "
              "against the glass.")

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1.05em;margin-bottom:.3em}
.disclaimer{background:#fff4d6;border:1px solid #e0b84c;padding:.5em .8em;font-weight:bold}
.verdict{font-size:1.15em;font-weight:bold;padding:.6em .8em;border-radius:4px;margin:1em 0}
.v-yes{background:#fde2e1;border:1px solid #d9534f}.v-no{background:#e3f3e3;border:1px solid #5cb85c}
.v-not_assessable{background:#eee;border:1px solid #999}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.small{font-size:.85em;color:#555}ul.reasons li{margin:.3em 0}
.gallery{display:flex;flex-wrap:wrap;gap:6px}.gallery figure{margin:0;width:100px;font-size:.8em;text-align:center}
.gallery img{width:96px;height:96px;border:1px solid #999;image-rendering:auto}code{background:#f4f4f4;padding:0 .3em}
@media print{@page{size:A4;margin:12mm}body{max-width:none;margin:0;padding:0;font-size:9.5pt;line-height:1.25}
h2{margin-top:.8em;break-after:avoid}figure,table,.verdict,.gallery figure{break-inside:avoid}
figure img{max-height:85mm;width:auto}.gallery figure{width:19mm}.gallery img{width:18mm;height:18mm}
td,th{padding:.1em .3em}.disclaimer{padding:.2em .4em}.noprint{display:none}}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of any value (None → 'n/a')."""
    return html.escape("n/a" if value is None else str(value), quote=True)


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI (the page needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, caption: str, alt: str) -> str:
    """An inline image with its caption."""
    return (f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(rows: Sequence[tuple[str, Any]], header: tuple[str, str] | None = None) -> str:
    """A two-column table of label → value (values escaped; numbers right-aligned)."""
    out = ["<table>"]
    if header:
        out.append(f"<tr><th>{esc(header[0])}</th><th>{esc(header[1])}</th></tr>")
    for label, value in rows:
        cls = ' class="num"' if isinstance(value, (int, float)) else ""
        out.append(f"<tr><th>{esc(label)}</th><td{cls}>{esc(value)}</td></tr>")
    out.append("</table>")
    return "".join(out)


SYNTHETIC_BANNER = ("This model was trained on synthetic phantoms only: its figures are not validated on real "
                    "tissue.")


def model_banner(model: Mapping[str, Any] | None) -> str:
    """A warning paragraph for a model trained on synthetic phantoms only ('' otherwise)."""
    if model and model.get("synthetic_only"):
        return f'<p class="disclaimer">{esc(SYNTHETIC_BANNER)}</p>\n'
    return ""


_TTA_LABELS = {"mitoses_per_10hpf": "Mitoses per 10 HPF", "mitoses_per_mm2": "Mitoses per mm²",
               "mitoses_count": "Mitoses counted", "necrosis_pct_of_tumour": "Necrosis, % of tumour",
               "tumour_area_mm2": "Tumour area, mm²", "spindle_fraction": "Spindle-cell fraction of tumour"}


def tta_section(tta: Mapping[str, Any] | None) -> str:
    """The 'Test-time augmentation' section: each measurement's spread over the flips and turns ('' when off)."""
    if not tta or not tta.get("enabled"):
        return ""
    rows = []
    for key, label in _TTA_LABELS.items():
        e = (tta.get("measurements") or {}).get(key)
        if not e:
            continue
        rows.append(f"<tr><td>{esc(label)}</td><td>{esc(fmt_num(e.get('reported')))}</td>"
                    f"<td>{esc(fmt_num(e['min']))} – {esc(fmt_num(e['max']))}</td><td>{esc(fmt_num(e['sd']))}</td></tr>")
    votes = tta.get("high_grade_votes") or {}
    vote_text = ", ".join(f"{esc(str(k).replace('True', 'high grade').replace('False', 'not high grade'))}: {n}"
                          for k, n in votes.items())
    stable = ("The verdict is the same under every flip and turn." if tta.get("verdict_stable") else
              "The verdict changes with the orientation of the tiles: treat it as borderline.")
    return (f"<h2>Test-time augmentation</h2><p>Every tile was scored under {esc(str(tta.get('n_variants')))} flips "
            f"and turns; the figures above use their mean. Each variant alone, graded with the same rules, gives "
            f"the spread below (the model's answers to the same tissue, not a confidence interval). "
            f"Verdicts per variant: {vote_text}. {esc(stable)}</p>"
            "<table><tr><th>Measurement</th><th>Reported (mean)</th><th>Range over variants</th><th>SD</th></tr>"
            + "".join(rows) + "</table>")


def domain_rows(domain: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The report's 'Training domain' rows: status, fraction of tissue in domain, method, notes."""
    if not domain:
        return [("Training domain", "not reported")]
    frac = domain.get("in_domain_fraction")
    return [("Training domain", domain.get("status")),
            ("Tissue like the training data", "n/a" if frac is None else f"{100 * frac:.0f} %"),
            ("Method", domain.get("method") or "n/a"),
            ("Notes", "; ".join(domain.get("notes") or []) or "none")]


def provenance_rows(model: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """One row per head: what it was trained and validated on (the card's provenance)."""
    prov = model.get("provenance") or {}
    if not prov:
        return [("Training data", "not recorded in the model card: treat every figure as unvalidated")]
    return [(f"Trained on ({head})", text) for head, text in prov.items()]


def page(title: str, body: str, banner: str = "") -> str:
    """A whole HTML document with the research-use disclaimer at top and bottom (and ``banner`` under it)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<p class=\"disclaimer\">{esc(DISCLAIMER)}</p>\n{banner}<h1>{esc(title)}</h1>\n{body}\n"
        f"<p class=\"disclaimer\">{esc(DISCLAIMER)}</p>\n</body></html>\n"
    )


def _mm2(v: float | None) -> str:
    return "n/a" if v is None else f"{fmt_num(v, 3)} mm²"


def _pct(v: float | None, scale: float = 1.0) -> str:
    return "n/a" if v is None else f"{fmt_num(v * scale, 1)} %"


def measurement_rows(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The measurements table of a slide report."""
    m = report["measurements"]
    mit = m["mitoses"]
    hs = mit.get("hotspot")
    pat = m["pattern"]
    shares = pat.get("shares") or {}
    rows: list[tuple[str, Any]] = [
        ("Tissue area", _mm2(m["tissue_area_mm2"])),
        ("Tumour area (viable + necrosis)", _mm2(m["tumour_area_mm2"])),
        ("Viable tumour area", _mm2(m.get("viable_tumour_area_mm2"))),
        ("Necrosis area", _mm2(m["necrosis_area_mm2"])),
        ("Necrosis, % of tumour", _pct(m["necrosis_pct_of_tumour"])),
        ("Spindle fraction of viable tumour", _pct(pat.get("spindle_fraction"), 100)),
        ("Dominant pattern", pat.get("dominant") or "n/a"),
        ("Pattern shares (of spindle area)", ", ".join(f"{k} {fmt_num(v * 100, 1)} %" for k, v in shares.items()) or "n/a"),
        ("Mitoses detected / ≥ min score / counted in viable tumour",
         f"{mit['n_detections']} / {mit['n_above_threshold']} / {mit['count']} (min score {fmt_num(mit['min_score'])})"),
        ("Mitoses per mm² (viable tumour)", fmt_num(mit.get("per_mm2"))),
        ("Mitoses per 10 HPF (whole viable tumour)", whole_tumour_phrase(mit)),
    ]
    if hs:
        rows.append(("Mitoses per 10 HPF (hotspot)", hotspot_phrase(hs)))
        note = hotspot_note(hs)
        if note:
            rows.append(("Note", f"the hotspot is the whole viable tumour: {note}"))
        rows.append(("Densest window", f"{hs['shape']}, {fmt_area(hs['area_mm2'])} mm² ({fmt_num(hs['n_hpf'])} HPF), "
                                       f"{hs.get('window_count', hs['count'])} mitoses"
                                       + ("" if hs.get("tumour_fraction") is None
                                          else f", {fmt_num(hs['tumour_fraction'] * 100, 1)} % viable tumour")))
        if hs.get("box_um"):
            x0, y0, x1, y1 = hs["box_um"]
            rows.append(("Densest window location (µm from slide origin)",
                         f"centre ({fmt_num(hs['centre_x_um'], 0)}, {fmt_num(hs['centre_y_um'], 0)}); "
                         f"box x {fmt_num(x0, 0)}–{fmt_num(x1, 0)}, y {fmt_num(y0, 0)}–{fmt_num(y1, 0)} (clipped to the slide)"))
    rows.append(("HPF area", f"{fmt_num(mit['hpf_area_mm2'], 4)} mm² ({mit['hpf_preset']})"))
    g = report["grading"]
    rows.append(("FNCLCC mitotic score", fmt_num(g["mitotic_score"]["score"]) if g["mitotic_score"]["assessable"]
                 else f"not assessable ({g['mitotic_score']['reason']})"))
    rows.append(("FNCLCC necrosis score", fmt_num(g["necrosis_score"]["score"]) if g["necrosis_score"]["assessable"]
                 else f"not assessable ({g['necrosis_score']['reason']})"))
    rows.append(("Tiles (all / tumour / necrotic)", f"{m['n_tiles']} / {m['n_tumour_tiles']} / {m['n_necrotic_tiles']}"))
    return rows


def _evidence_table(report: Mapping[str, Any]) -> str:
    out = ["<table><tr><th>Criterion</th><th>Value</th><th>Threshold</th><th>Rule</th><th>Met</th></tr>"]
    for c in report["grading"]["high_grade"]["criteria"]:
        ev = c["evidence"]
        th = ", ".join(f"{k} = {fmt_num(v)}" for k, v in ev["thresholds"].items())
        met = "not assessable" if c["passed"] is None else ("yes" if c["passed"] else "no")
        value = "n/a" if ev["value"] is None else f"{fmt_num(ev['value'])} {ev['unit']}"
        if ev["value"] is not None and c["name"] == "mitotic_activity":
            value = mitotic_evidence_phrase(ev)
        out.append(f"<tr><td>{esc(c['name'].replace('_', ' '))}</td><td>{esc(value)}</td><td>{esc(th)}</td>"
                   f"<td>{esc(ev['rule'])}</td><td>{esc(met)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def ihc_section(ihc: Mapping[str, Any], heatmap_png: bytes | None = None) -> str:
    """One IHC marker: call with reason, % positive, H-score, counts, region, QC flags and its heatmap."""
    raw_call = ihc.get("call")
    call: Mapping[str, Any] = raw_call if isinstance(raw_call, Mapping) else {}
    counts = list(ihc.get("counts") or [None] * 4) + [None] * 4
    rows = [
        ("Call", f"{ihc_label(ihc)} — {call.get('reason', '')}".rstrip(" —")),
        ("Positive cells (≥ 1+)", _pct(ihc.get("pct_positive"))),
        ("H-score", fmt_num(ihc.get("h_score"))),
        ("Cells 0 / 1+ / 2+ / 3+", " / ".join(esc_count(c) for c in counts[:4])),
        ("Cells scored", ihc.get("n_cells")),
        ("Region", ihc.get("region")),
        ("Compartment", ihc.get("compartment")),
        ("QC flags", ", ".join(qc_names(ihc)) or "none"),
        ("Registration onto the H&E", registration_text((ihc.get("qc_values") or {}).get("registration"))),
        ("Slide", ihc.get("slide")),
    ]
    body = [f"<h3>{esc(ihc.get('marker', '?'))}</h3><p>{esc(ihc_sentence(ihc))}</p>", table(rows)]
    # ihc.json lists flag names in qc and their messages in qc_details; older dicts put dicts in qc
    for f in [*(ihc.get("qc") or []), *(ihc.get("qc_details") or [])]:
        if isinstance(f, Mapping) and f.get("message"):
            body.append(f"<p class=\"small\">QC {esc(f.get('name'))}: {esc(f['message'])}</p>")
    if heatmap_png is not None:
        body.append(figure(heatmap_png, f"{ihc.get('marker')}: positivity per tile", f"{ihc.get('marker')} heatmap"))
    return "".join(body)


def registration_text(reg: Any) -> str:
    """An IHC slide's registration onto the H&E in words: status, estimated error and what the mask was."""
    if not isinstance(reg, Mapping):
        return "not registered"
    status, err = str(reg.get("status", "?")), reg.get("estimated_error_um")
    err_s = f", estimated error {fmt_num(err, 1)} µm" if isinstance(err, (int, float)) else ""
    if status == "ok":
        how = "frames agree" if str(reg.get("applied", "")).startswith("identity") else "tumour mask carried over"
        return f"ok{err_s} ({how})"
    if status == "not_registered":
        return "not possible (H&E slide not found): the tumour mask was used in this slide's own frame"
    return f"{status}{err_s}: the tumour mask was not used; counted in all tissue"


def esc_count(c: Any) -> str:
    """A cell count as text."""
    return "n/a" if c is None else str(int(c))


def gallery_section(items: Sequence[Any], n_counted: int | None, crop_um: float = 64.0) -> str:
    """Every mitosis counted in the hotspot: a crop each with its score, best first."""
    if n_counted is None:
        return ""
    if not items:
        return "<h2>Mitoses counted in the hotspot</h2><p>None.</p>"
    more = "" if n_counted <= len(items) else f" (the {len(items)} best shown of {n_counted})"
    figs = "".join(f'<figure><img src="{data_uri(it.png)}" alt="mitosis {esc(fmt_num(it.score, 2))}">'
                   f"<figcaption>{esc(fmt_num(it.score, 2))}</figcaption></figure>" for it in items)
    return (f"<h2>Mitoses counted in the hotspot</h2><p>{n_counted} mitoses{esc(more)}, sorted by score; each crop is "
            f"{esc(fmt_num(crop_um, 0))} µm wide, centred on the detection.</p><div class=\"gallery\">{figs}</div>")


def slide_page(report: Mapping[str, Any], images: Sequence[tuple[bytes, str, str]],
               ihc_images: Sequence[bytes | None] = (), *, gallery: Sequence[Any] = (),
               n_counted: int | None = None, view_cmd: str | None = None) -> str:
    """The slide report page: verdict with evidence, measurements, images, IHC, model card, provenance."""
    s, v = report["slide"], report["verdict"]
    parts = [f'<p class="verdict v-{esc(v["high_grade"])}">{esc(v["line"])}</p>']
    parts.append("<h2>Why</h2><ul class=\"reasons\">" + "".join(f"<li>{esc(r)}</li>" for r in v["reasons"]) + "</ul>")
    parts.append(_evidence_table(report))
    hs = report.get("hotspot")
    if hs:
        x0, y0, x1, y1 = hs["box_um"]
        note = hotspot_note(hs)
        parts.append(f"<p>Hotspot: {esc(hotspot_phrase(hs))}{esc('; ' + note if note else '')}. "
                     f"{'Densest' if note else 'The'} {esc(hs['shape'])} window ({esc(fmt_area(hs['area_mm2']))} mm² = "
                     f"{esc(fmt_num(hs['n_hpf']))} HPF of {esc(fmt_num(report['measurements']['mitoses']['hpf_area_mm2'], 4))} mm²): "
                     f"x {esc(fmt_num(x0, 0))}–{esc(fmt_num(x1, 0))} µm, y {esc(fmt_num(y0, 0))}–{esc(fmt_num(y1, 0))} µm "
                     f"from the slide origin, clipped to the slide (level-0 px x {esc(fmt_num(hs['box_px'][0], 0))}–{esc(fmt_num(hs['box_px'][2], 0))}, "
                     f"y {esc(fmt_num(hs['box_px'][1], 0))}–{esc(fmt_num(hs['box_px'][3], 0))}); outlined in cyan on the images.</p>")
    else:
        parts.append("<p>No hotspot: no mitosis was counted in viable tumour.</p>")
    parts.append("<h2>Measurements</h2>" + table(measurement_rows(report)))
    parts.append(f"<p class=\"small\">{esc(report['grading'].get('note', ''))}</p>")
    parts.append(tta_section(report.get("tta")))
    if images:
        parts.append("<h2>Images</h2>")
        parts += [figure(png, caption, alt) for png, caption, alt in images]
    parts.append(gallery_section(gallery, n_counted))
    if view_cmd:
        parts.append(f"<p>Check every count against the slide: <code>{esc(view_cmd)}</code> opens it in a local "
                     "viewer with these overlays (or import annotations.geojson into QuPath).</p>")
    if report.get("ihc"):
        parts.append("<h2>Immunohistochemistry</h2>")
        ihc_imgs = list(ihc_images) + [None] * len(report["ihc"])
        parts += [ihc_section(r, ihc_imgs[i]) for i, r in enumerate(report["ihc"])]
    m = report["model"]
    metrics = ", ".join(f"{k} {fmt_num(val, 3)}" for k, val in (m.get("metrics") or {}).items()) or "none recorded"
    scales = m.get("scales") or {}
    inputs = "; ".join(f"{'/'.join(v.get('heads') or [])}: {v.get('tile_px')} px at {v.get('mpp')} µm/px ({v.get('backbone')})"
                       for v in scales.values()) or f"{m.get('tile_px')} px at {m.get('mpp')} µm/px"
    sel = m.get("threshold_selection") or {}
    thr = m.get("mitosis_threshold")
    thr_text = "n/a" if thr is None else (f"{fmt_num(thr, 2)} ({sel.get('method', 'config')}"
                                          + (f", F1 {fmt_num(sel['f1'], 2)} on validation" if sel.get("f1") is not None else "")
                                          + ")")
    parts.append("<h2>Training domain</h2>" + table(domain_rows(report.get("domain"))))
    parts.append("<h2>Model</h2>" + table([
        ("Name", m.get("name")), ("Backbone", m.get("backbone")), ("Pattern classes", ", ".join(m.get("classes") or [])),
        ("Inputs", inputs), ("Mitosis threshold", thr_text), ("Weights sha256", m.get("weights_sha256")),
        *provenance_rows(m),
        ("Validation metrics", metrics),
    ]))
    dims = s.get("dimensions")
    parts.append("<h2>Slide and provenance</h2>" + table([
        ("Slide", s["name"]), ("File", s.get("path")), ("Vendor", s.get("vendor")),
        ("Level-0 resolution", f"{fmt_num(s['mpp'], 4)} µm/px"),
        ("Dimensions", "n/a" if not dims else f"{dims[0]} × {dims[1]} px"),
        ("histo version", report["histo_version"]), ("Grading config sha256", report["grading_config_sha256"]),
        ("Report created", report["created"]), ("Report schema", report["schema"]),
    ]))
    return page(f"Slide report — {s['name']}", "\n".join(parts), banner=model_banner(m))


def case_page(case: Mapping[str, Any], slide_links: Sequence[tuple[str, str]]) -> str:
    """The case report page: the summary sentence, the H&E verdict, the IHC table and links to slide reports."""
    parts = [f'<p class="verdict v-{esc((case.get("high_grade") or {}).get("verdict", "not_assessable"))}">'
             f'{esc(case["summary"])}</p>']
    he = case.get("he")
    if he:
        parts.append("<h2>H&amp;E</h2>" + f"<p>{esc(case['high_grade']['line'])}</p>" + table([
            ("Slide", he["slide"]),
            ("Tumour area", _mm2(he["measurements"].get("tumour_area_mm2"))),
            ("Necrosis, % of tumour", _pct(he["measurements"].get("necrosis_pct_of_tumour"))),
            ("Mitoses per 10 HPF (hotspot)", he["measurements"].get("hotspot_text")
             or fmt_num(he["measurements"].get("hotspot_per_10hpf"))),
            ("Mitoses per 10 HPF (whole viable tumour)", he["measurements"].get("whole_tumour_text")
             or fmt_num(he["measurements"].get("per_10hpf_whole_tumour"))),
            ("Dominant pattern", he["measurements"].get("dominant_pattern") or "n/a"),
        ]))
    if case.get("ihc"):
        parts.append("<h2>Immunohistochemistry</h2><table><tr><th>Marker</th><th>Call</th><th>H-score</th>"
                     "<th>% ≥ 1+</th><th>Cells</th><th>Region</th><th>Registration</th><th>QC</th><th>Reason</th></tr>")
        for r in case["ihc"]:
            parts.append(f"<tr><td>{esc(r['marker'])}</td><td>{esc(r['call'])}</td><td class=\"num\">{esc(fmt_num(r.get('h_score')))}</td>"
                         f"<td class=\"num\">{esc(fmt_num(r.get('pct_positive')))}</td><td class=\"num\">{esc(r.get('n_cells'))}</td>"
                         f"<td>{esc(r.get('region'))}</td><td>{esc(registration_text(r.get('registration')))}</td>"
                         f"<td>{esc(', '.join(r.get('qc') or []) or 'none')}</td>"
                         f"<td>{esc(r.get('reason'))}</td></tr>")
        parts.append("</table>")
    if slide_links:
        parts.append("<h2>Slide reports</h2><ul>" + "".join(
            f'<li><a href="{esc(href)}">{esc(label)}</a></li>' for label, href in slide_links) + "</ul>")
    model = case.get("model") or {}
    parts.append("<h2>Training domain</h2>" + table(domain_rows(case.get("domain"))))
    parts.append("<h2>Provenance</h2>" + table([("histo version", case["histo_version"]), ("Created", case["created"]),
                                                ("Report schema", case["schema"]), ("Model", model.get("name") or "n/a"),
                                                *provenance_rows(model)]))
    return page(f"Case report — {case['case_id']}", "\n".join(parts), banner=model_banner(model))


__all__ = ["DISCLAIMER", "case_page", "data_uri", "esc", "figure", "ihc_section", "measurement_rows", "page",
           "slide_page", "table"]
