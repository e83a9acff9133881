"""manifests/run_record.py: the runs row of a run, at its start and its end."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from manifests.run_record import RunRecord, new_run_id
from manifests.store import list_parts, read_table, write_part
from manifests.views import connect


@dataclass
class DemoConfig:
    output: str
    steps: int = 3


def _rows(out) -> list[dict]:
    return read_table(out, "runs").to_pylist()


def test_row_at_start_and_at_end_with_config_versions_status_and_summary(tmp_path):
    cfg = DemoConfig(output=str(tmp_path))
    with RunRecord(tmp_path, "demo", cfg, packages=("duckdb",), extra_versions={"codec_id": "abc"}) as run:
        assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", run.run_id)
        [row] = _rows(tmp_path)  # written when the run starts
        assert row["run_id"] == run.run_id and row["job"] == "demo" and row["finished"] is None
        assert json.loads(row["stats"]) == {"status": "running"}
        assert json.loads(row["config"]) == {"output": str(tmp_path), "steps": 3}
        v = json.loads(row["versions"])
        assert v["torch"] and v["pyarrow"] and v["duckdb"] and v["python"] and v["codec_id"] == "abc"
        cfg.steps = 5  # resolved during the run
        run.set_config(cfg)
        assert json.loads(_rows(tmp_path)[0]["config"])["steps"] == 5
        run.summary = {"samples": 7, "by_reason": {"too_short": 2}}
    [row] = _rows(tmp_path)  # the same part, rewritten
    assert [p.name for p in list_parts(tmp_path, "runs")] == [f"demo-{run.run_id}.parquet"]
    assert row["finished"] is not None and row["finished"] >= row["started"]
    stats = json.loads(row["stats"])
    assert stats["status"] == "ok" and stats["samples"] == 7 and stats["by_reason"] == {"too_short": 2}
    assert 0 <= stats["run_seconds"] < 60


def test_a_failed_run_records_its_error_and_the_error_propagates(tmp_path):
    with pytest.raises(ValueError, match="bad shard"):
        with RunRecord(tmp_path, "demo", {"a": 1}) as run:
            run.summary = {"samples": 2}
            raise ValueError("bad shard 000003")
    [row] = _rows(tmp_path)
    stats = json.loads(row["stats"])
    assert row["finished"] is not None
    assert stats == {"samples": 2, "error": "ValueError: bad shard 000003", "status": "failed",
                     "run_seconds": stats["run_seconds"]}


def test_config_to_json_is_used_when_the_config_has_one(tmp_path):
    class Secret:
        def to_json(self):
            return json.dumps({"hf_token": "***"})

    with RunRecord(tmp_path, "demo", Secret()):
        pass
    assert json.loads(_rows(tmp_path)[0]["config"]) == {"hf_token": "***"}


def test_older_rows_stay_readable_next_to_new_ones(tmp_path):
    """A row as the jobs wrote it before RunRecord (stats null at the start, bare stats at the end)."""
    old_id = new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    write_part(tmp_path, "runs", f"ingest-{old_id}", [{
        "run_id": old_id, "job": "ingest", "started": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "finished": datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC), "config": "{}", "versions": "{}",
        "stats": json.dumps({"sources_total": 3})}])
    with RunRecord(tmp_path, "ingest", {}) as run:
        run.summary = {"sources_total": 0}
    con = connect(tmp_path)
    got = con.execute("SELECT run_id, json_extract_string(stats, '$.status') FROM runs ORDER BY started").fetchall()
    assert got == [(old_id, None), (run.run_id, "ok")]
