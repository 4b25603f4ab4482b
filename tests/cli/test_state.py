"""The dev state: owner-only, whatever was there before."""

from __future__ import annotations

import stat
from pathlib import Path

from webhook_relay.cli import state as dev_state


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_existing_loose_directory_and_file_are_made_owner_only(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    leftover = (state_dir / dev_state.STATE_FILE).with_suffix(".tmp")
    leftover.write_text("{}")
    leftover.chmod(0o644)

    dev_state.prepare(state_dir)
    written = dev_state.write(
        state_dir,
        dev_state.DevState(
            url="http://127.0.0.1:1",
            secret="whsec_x",
            jwks_url="",
            kid="k",
            private_key="",
            project="p",
            prefix="gemini-",
            firestore_host="",
            pubsub_host="",
            topics=[],
            subscriptions={},
        ),
    )

    assert mode(state_dir) == 0o700
    assert mode(written) == 0o600
