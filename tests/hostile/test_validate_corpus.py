"""Every case of the hostile corpus through ``meshext validate``: a clear error (or a
documented acceptance), never a traceback, a hang or an invalid resource accepted."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from meshext.cli.main import cli
from tests.hostile.corpus import Case, all_config_cases, build_case

CASES = all_config_cases()
DEADLINE = 120.0
"""Far beyond what any case needs; a case only reaches it if it hangs."""


def validate(folder: Path) -> Result:
    results: list[Result] = []
    worker = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(cli, ["validate", str(folder)])),
        daemon=True,
    )
    worker.start()
    worker.join(DEADLINE)
    assert results, f"meshext validate {folder} did not finish"
    return results[0]


def test_the_corpus_holds_at_least_a_hundred_cases_with_the_image_cases() -> None:
    from tests.hostile.test_serve_corpus_e2e import image_case_names  # noqa: PLC0415

    assert len(CASES) + len(image_case_names()) >= 100


@pytest.mark.parametrize("case", CASES, ids=str)
def test_validate_reports_each_hostile_case_clearly(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / case.name
    build_case(case, folder)
    result = validate(folder)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.name}: {result.exception!r}"
    )
    output = result.output
    assert "Traceback" not in output
    counted = re.search(r"(\d+) resource\(s\) valid", output)
    assert counted is not None, output
    assert int(counted.group(1)) == case.valid, output
    if case.errors:
        assert result.exit_code == 1, output
        for expected in case.errors:
            assert expected in output, f"{case.name}: {expected!r} not in {output}"
    else:
        assert result.exit_code == 0, output
