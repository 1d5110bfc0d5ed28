"""The prepared device suite (benchmarks/device_suite.py) runs every section at toy size
on the CPU and writes its tables; a section that cannot run here says why."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_smoke_writes_every_table(tmp_path):
    import device_suite

    tables = device_suite.main(["--smoke", "--out", str(tmp_path)])
    assert [t.name for t in tables] == list(device_suite.SECTIONS)
    markdown = (tmp_path / "device_suite.md").read_text()
    data = json.loads((tmp_path / "device_suite.json").read_text())
    assert data["header"]["mode"] == "smoke"
    by_name = {t["name"]: t for t in data["tables"]}
    assert set(by_name) == set(device_suite.SECTIONS)
    for name, table in by_name.items():
        assert device_suite.TITLES[name] in markdown
        assert table["status"] in ("ok", "skipped"), (name, table["notes"])
        if table["status"] == "ok":
            assert table["rows"] and all(len(r) == len(table["headers"]) for r in table["rows"])
        else:
            assert table["notes"], name  # a skipped section says why
    assert [r[0] for r in by_name["train"]["rows"]] == ["full", "paper K/V"]
    assert [r[0] for r in by_name["sampler"]["rows"]] == ["box", "paper"]
    cudnn = [r for r in by_name["attention"]["rows"] if r[2] == "cudnn"]
    assert cudnn and all(r[3] == "skipped" for r in cudnn)  # no NVIDIA GPU here


def test_budget_skips_with_a_note(tmp_path):
    import device_suite

    tables = device_suite.main(["--smoke", "--out", str(tmp_path), "--only", "sampler",
                                "--budget-s", "-1"])
    assert tables[0].status == "skipped" and "time budget" in tables[0].notes[0]


def test_run_script_is_wired():
    script = (Path(__file__).resolve().parent.parent / "benchmarks" / "device_run.sh")
    text = script.read_text()
    assert "benchmarks/device_suite.py --out \"$OUT\"" in text
    assert "pip install" in text and ".whl/*.whl" in text
