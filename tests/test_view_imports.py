"""`histo view` and `histo cohort` start without torch (prediction folders load through histo.prediction) or the IHC pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_view import write_case_folder

from histo.cli import main

_PROBE = """
import json, sys
from histo.cli import build_parser
from histo.view import open_viewer
pred, ihc, case = sys.argv[1:]
build_parser().parse_args(["view", pred, ihc])
srv = open_viewer([pred, ihc], port=0)
app = srv.app
status = [app.respond(p)[0] for p in ("/", "/view.json", "/slide/0.dzi", "/slide/0_files/9/0_0.jpeg",
                                        "/layer/0/mitoses.json", "/layer/0/necrosis.png", "/layer/1/cells.json")]
srv.httpd.server_close(); app.close()
ihc_pipeline = "histo.ihc" in sys.modules
from histo.cohort import write_cohort
write_cohort([case], case + "_cohort", csv_tables=True)
print(json.dumps({"status": status, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:5],
                  "ihc_pipeline": ihc_pipeline}))
"""


def test_viewer_and_cohort_of_a_prediction_folder_do_not_import_torch(tmp_path, test_slide_path):
    case = write_case_folder(tmp_path, test_slide_path)
    pred, ihc = case / "he" / "case1_HE", case / "ihc" / "ALK" / "case1_ALK"
    out = subprocess.run([sys.executable, "-c", _PROBE, str(pred), str(ihc), str(case)], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == [200] * 7
    assert got["torch"] == []
    assert got["ihc_pipeline"] is False  # nor the IHC pipeline (scikit-image) for an IHC pane


def test_the_viewers_ihc_classes_are_histo_ihcs():
    from histo.ihc.outputs import CLASS_COLOURS
    from histo.ihc.result import CLASS_NAMES
    from histo.view.sources import IHC_CLASS_COLOURS, IHC_CLASS_NAMES

    assert tuple(CLASS_NAMES) == IHC_CLASS_NAMES
    assert tuple(map(tuple, CLASS_COLOURS)) == IHC_CLASS_COLOURS


def test_view_and_cohort_take_quiet(tmp_path, test_slide_path, capsys):
    case = write_case_folder(tmp_path, test_slide_path)
    capsys.readouterr()
    assert main(["cohort", str(case), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert capsys.readouterr().err == "" and (tmp_path / "o" / "cohort.csv").is_file()
    assert main(["cohort", str(case), "--out", str(tmp_path / "o2")]) == 0
    assert "1 rows" in capsys.readouterr().err
