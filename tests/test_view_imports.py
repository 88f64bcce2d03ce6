"""`histo view` and `histo cohort` start without torch: prediction folders load through histo.prediction."""

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
build_parser().parse_args(["view", *sys.argv[1:]])
srv = open_viewer(sys.argv[1:], port=0)
app = srv.app
status = [app.respond(p)[0] for p in ("/", "/view.json", "/slide/0.dzi", "/slide/0_files/9/0_0.jpeg",
                                        "/layer/0/mitoses.json", "/layer/0/necrosis.png")]
srv.httpd.server_close(); app.close()
from histo.cohort import write_cohort
write_cohort([sys.argv[-1]], sys.argv[-1] + "_cohort", csv_tables=True)
print(json.dumps({"status": status, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:5]}))
"""


def test_viewer_and_cohort_of_a_prediction_folder_do_not_import_torch(tmp_path, test_slide_path):
    case = write_case_folder(tmp_path, test_slide_path)
    pred = case / "he" / "case1_HE"
    out = subprocess.run([sys.executable, "-c", _PROBE, str(pred), str(case)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == [200] * 6
    assert got["torch"] == []


def test_view_and_cohort_take_quiet(tmp_path, test_slide_path, capsys):
    case = write_case_folder(tmp_path, test_slide_path)
    capsys.readouterr()
    assert main(["cohort", str(case), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert capsys.readouterr().err == "" and (tmp_path / "o" / "cohort.csv").is_file()
    assert main(["cohort", str(case), "--out", str(tmp_path / "o2")]) == 0
    assert "1 rows" in capsys.readouterr().err
