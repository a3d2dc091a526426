"""Where the repository is: every tool reads and writes files relative to its root,
whatever directory it was started from."""

from __future__ import annotations

from pathlib import Path

# parity.harness.repo -> the checkout's root
REPO_ROOT = Path(__file__).resolve().parents[3]
