"""`webhook-relay redrive` on a long run: progress on stderr, one summary line on stdout."""

from __future__ import annotations

from tests.cli.conftest import DevStack


def test_redrive_shows_progress_every_2_s_and_ends_with_one_summary(dev_stack: DevStack) -> None:
    # An empty pull waits --wait seconds before the subscription counts as empty: a run that
    # long must show it is alive, on stderr, so stdout stays one line per message + a summary.
    result = dev_stack.cli("redrive", "--subscription", "gemini-unrouted-dev", "--wait", "5")
    assert result.returncode == 0, result.stderr
    progress = [x for x in result.stderr.splitlines() if x.startswith("redriving gemini-unrou")]
    ticks = [x for x in progress if x.endswith(" so far")]
    assert len(ticks) >= 2
    assert ticks[0] == "redriving gemini-unrouted-dev: moved 0, left 0, failed 0 so far"
    lines = result.stdout.splitlines()
    assert "so far" not in result.stdout
    assert lines[-1] == "moved 0, left 0, failed 0"
