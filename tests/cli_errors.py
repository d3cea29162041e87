"""The CLI's refusal, as the user sees it: exit 2 and one `fluxnb: error:` block, never a traceback."""

import pytest

from fluxnb.cli import main


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *texts: str) -> str:
    """The CLI run in this process exits 2 with one error block holding each text (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fluxnb: error: ") and "Traceback" not in err, err
    for text in texts:
        assert text in err, err
    return err
