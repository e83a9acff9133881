from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq

from manifests.schemas import SCHEMA_VERSION, TABLES
from manifests.store import list_parts, read_table, write_part
from manifests.views import connect
from tests.conftest import REPO


def make(out):
    write_part(out, "sources", "000000", [
        {"source_id": "a" * 16, "path": "/c/a.wav", "duration": 3600.0, "status": "ok"},
        {"source_id": "b" * 16, "path": "/c/b.wav", "duration": None, "status": "rejected",
         "error": "not_audio: /c/b.wav: not decodable"},
    ])
    write_part(out, "segments", "000000", [
        {"key": "a" * 16 + "_00000", "source_id": "a" * 16, "speaker": "a" * 16 + ":S0", "duration": 10.0,
         "kept": True, "language": "en", "words": [{"word": "hi", "start": 0.1, "end": 0.3, "score": 0.9,
                                                   "speaker": "a" * 16 + ":S0"}]},
        {"key": "a" * 16 + "_00001", "source_id": "a" * 16, "speaker": "a" * 16 + ":S1", "duration": 0.5,
         "kept": False, "drop_reason": "too_short", "words": []},
    ])


def test_parts_carry_schema_version_and_explicit_schema(tmp_path):
    make(tmp_path)
    (p,) = list_parts(tmp_path, "segments")
    t = pq.read_table(p)
    assert t.schema.equals(TABLES["segments"])
    assert set(t["schema_version"].to_pylist()) == {SCHEMA_VERSION}
    assert read_table(tmp_path, "segments")["words"][0].as_py()[0]["word"] == "hi"
    assert not [x for x in (tmp_path / "manifests/segments").iterdir() if x.suffix != ".parquet"]


def test_views_answer_the_readme_queries(tmp_path):
    make(tmp_path)
    con = connect(tmp_path)
    hours = con.execute("SELECT speaker, sum(duration) / 3600 FROM segments WHERE kept GROUP BY 1").fetchall()
    assert hours == [("a" * 16 + ":S0", 10.0 / 3600)]
    reasons = con.execute("SELECT drop_reason, count(*) FROM segments WHERE NOT kept GROUP BY 1").fetchall()
    assert reasons == [("too_short", 1)]
    why = con.execute("SELECT split_part(error, ':', 1) FROM sources WHERE status = 'rejected'").fetchall()
    assert why == [("not_audio",)]
    # tables without parts are empty views with the right columns
    assert con.execute("SELECT count(*) FROM tokens").fetchone()[0] == 0
    assert "codec_id" in [d[0] for d in con.execute("SELECT * FROM tokens").description]


def test_cli_prints_a_table_and_names_a_bad_directory(tmp_path):
    make(tmp_path)
    p = subprocess.run([sys.executable, "-m", "manifests", str(tmp_path),
                        "SELECT language, count(*) AS n FROM segments WHERE kept GROUP BY 1"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "en" in p.stdout and "language" in p.stdout
    p = subprocess.run([sys.executable, "-m", "manifests", str(tmp_path / "nope")], capture_output=True, text=True,
                       cwd=REPO)
    assert p.returncode == 2 and "nope" in p.stderr
    p = subprocess.run([sys.executable, "-m", "manifests", str(tmp_path), "SELEC broken"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 2 and "error" in p.stderr
