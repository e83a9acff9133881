"""What a user sees: the suite's end-to-end ingest (real speech + bad inputs, tests/pipeline/e2e.py)
prints our progress, our error lines for the bad files and the summary, and none of the known
third-party noise that used to sit between them."""

from __future__ import annotations

import re

# Each pattern is noise that a healthy run printed before (issue 12): Python warnings of any
# class (UserWarning from pkg_resources, numpy RuntimeWarnings such as "Mean of empty slice",
# Lightning's checkpoint-upgrade notice, Ray Data's progress blocks, execution plan and memory
# detector, Ray's start-up line.
NOISE = [
    re.compile(p) for p in (
        r"[A-Za-z]Warning\b", r"Mean of empty slice", r"invalid value encountered", r"Lightning automatically upgraded",
        r"pkg_resources", r"logging_progress", r"Running Dataset", r"Execution plan of Dataset",
        r"issue_detector", r"Ray only requests", r"Started a local Ray instance",
    )
]


def test_a_run_prints_our_lines_and_no_known_noise(e2e_ingested):
    lines = (e2e_ingested["stdout"] + e2e_ingested["stderr"]).splitlines()
    noise = [i for i, ln in enumerate(lines) if any(p.search(ln) for p in NOISE)]
    assert not noise, "\n".join("\n".join(lines[i: i + 8]) for i in noise[:5])  # with what follows
    assert any("[ingest]" in ln and "sources" in ln for ln in lines)
    assert "== ingest summary ==" in e2e_ingested["stdout"]


def test_bad_inputs_still_print_their_error_line(e2e_ingested):
    err = e2e_ingested["stderr"].splitlines()
    for name, (status, reason) in e2e_ingested["expected"].items():
        if status == "rejected":
            hits = [ln for ln in err if " WARNING " in ln and name in ln and reason in ln]
            assert hits, f"no warning line for {name} ({reason}) in the console"
