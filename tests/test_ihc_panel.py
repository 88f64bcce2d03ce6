"""Marker panel YAML: the shipped panel loads; bad keys and values are ConfigErrors naming key and file; call_marker."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from histo.errors import ConfigError, HistoError
from histo.ihc import call_marker, default_panel_path, load_panel, score_cells

REPO = Path(__file__).resolve().parents[1]
PANEL = REPO / "configs" / "markers" / "panel.yaml"


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "panel.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _minimal():
    return {"version": 1, "markers": {"ALK": {"compartment": "cytoplasm", "thresholds_od": [0.2, 0.4, 0.6],
                                               "call": {"type": "threshold", "min_percent_positive": 10}}}}


def test_shipped_panel_loads_with_expected_markers():
    panel = load_panel(PANEL)
    assert default_panel_path() == PANEL
    assert set(panel) == {"ALK", "S100", "CD34", "SMA", "ROS1", "Ki67"}
    assert panel["ALK"].compartment == "cytoplasm"
    assert panel["CD34"].compartment == "membrane"
    assert panel["Ki67"].compartment == "nucleus" and panel["Ki67"].call.type == "index"
    assert panel["Ki67"].cell_params.nuclear_channel == "hematoxylin+dab"
    assert panel["ALK"].cell_params.nuclear_channel == "hematoxylin"
    assert panel["ROS1"].call.min_h_score == 100.0
    assert {n: m.cell_params.dab_statistic for n, m in panel.items() if n != "CD34"} == dict.fromkeys(panel.keys() - {"CD34"}, "p75")
    assert panel["CD34"].cell_params.dab_statistic == "p90"
    # CD34's membrane line is read at 0.25 µm/px; the others at the default (None = 0.5)
    assert panel["CD34"].analysis_mpp == 0.25
    assert all(m.analysis_mpp is None for n, m in panel.items() if n != "CD34")
    assert {m.cell_params.shared_membrane for m in panel.values()} == {"exclude"}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(colour="brown"), "'colour'"),
        (lambda d: d["markers"]["ALK"].update(compartement="cytoplasm"), "'compartement'"),
        (lambda d: d["markers"]["ALK"]["call"].update(min_pct=5), "'min_pct'"),
        (lambda d: d["markers"]["ALK"].update(cells={"ring_um": 2}), "'ring_um'"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, mutate, key):
    d = _minimal()
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_panel(p)
    assert key in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda m: m.update(compartment="nuclear"), ["markers.ALK.compartment", "'nuclear'"]),
        (lambda m: m.update(thresholds_od=[0.4, 0.2, 0.6]), ["markers.ALK.thresholds_od", "increasing"]),
        (lambda m: m.update(thresholds_od=[0.2, 0.4]), ["thresholds_od"]),
        (lambda m: m["call"].update(type="vote"), ["markers.ALK.call.type", "'vote'"]),
        (lambda m: m["call"].update(min_percent_positive=150), ["min_percent_positive", "<= 100"]),
        (lambda m: m["call"].update(min_percent_positive="ten"), ["min_percent_positive", "number"]),
        (lambda m: m["call"].pop("min_percent_positive"), ["needs min_percent_positive"]),
        (lambda m: m.pop("compartment"), ["missing key 'compartment'"]),
        (lambda m: m.update(cells={"nuclear_channel": "eosin"}), ["nuclear_channel", "'eosin'"]),
        (lambda m: m.update(cells={"min_area_um2": 300}), ["max_area_um2"]),
        (lambda m: m.update(cells={"dab_statistic": "p99"}), ["markers.ALK.cells.dab_statistic", "'p99'", "p75"]),
        (lambda m: m.update(cells={"shared_membrane": "share"}), ["markers.ALK.cells.shared_membrane", "'share'", "exclude"]),
        (lambda m: m.update(analysis_mpp=2.0), ["markers.ALK.analysis_mpp", "0.1-1.0"]),
        (lambda m: m.update(analysis_mpp="fine"), ["markers.ALK.analysis_mpp", "number"]),
    ],
)
def test_bad_values_are_config_errors(tmp_path, mutate, words):
    d = _minimal()
    mutate(d["markers"]["ALK"])
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_panel(p)
    for w in words:
        assert w in str(e.value)
    assert str(p) in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml.*not found"):
        load_panel(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("markers: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_panel(p)


def _table(dab):
    n = len(dab)
    return pd.DataFrame({"x_px": np.arange(n) * 3.0, "y_px": np.zeros(n), "dab_cytoplasm": dab, "dab_nucleus": dab})


def test_call_marker_positive_negative_with_evidence():
    panel = load_panel(PANEL)
    alk = panel["ALK"]
    pos = score_cells(_table([0.5] * 12 + [0.0] * 88), alk.compartment, alk.thresholds_od)  # 12 % positive
    c = call_marker(alk, pos)
    assert c.call == "positive"
    assert c.evidence["pct_positive"] == pytest.approx(12.0)
    assert c.evidence["rule"]["min_percent_positive"] == 10.0
    assert c.evidence["thresholds_od"] == [0.2, 0.4, 0.6]
    assert "12.0 >= 10" in c.reason
    neg = score_cells(_table([0.5] * 8 + [0.0] * 92), alk.compartment, alk.thresholds_od)
    assert call_marker(alk, neg).call == "negative"
    d = call_marker(alk, neg).to_dict()
    assert d["marker"] == "ALK" and d["evidence"]["n_cells"] == 100


def test_call_marker_h_score_rule_index_and_insufficient():
    panel = load_panel(PANEL)
    ros1 = panel["ROS1"]
    s = score_cells(_table([0.45] * 60 + [0.0] * 40), ros1.compartment, ros1.thresholds_od)  # H = 120
    c = call_marker(ros1, s)
    assert c.call == "positive" and c.evidence["h_score"] == pytest.approx(120.0)
    s = score_cells(_table([0.45] * 40 + [0.0] * 60), ros1.compartment, ros1.thresholds_od)  # H = 80
    assert call_marker(ros1, s).call == "negative"
    ki = panel["Ki67"]
    s = score_cells(_table([0.8] * 30 + [0.0] * 70), ki.compartment, ki.thresholds_od)
    c = call_marker(ki, s)
    assert c.call == "index" and c.evidence["pct_positive"] == pytest.approx(30.0)
    few = score_cells(_table([0.8] * 5), ki.compartment, ki.thresholds_od)
    assert call_marker(ki, few).call == "insufficient_cells"
    with pytest.raises(HistoError, match="scored on"):
        call_marker(panel["ALK"], s)  # a Ki67 (nucleus) score is not an ALK (cytoplasm) score
    assert not math.isnan(s.h_score)
