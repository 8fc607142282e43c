"""Regenerate docs/cli.md from ``mbq CMD --help`` (``--check``: exit 1 if it is stale).

    python tools/gen_cli_md.py            # rewrite docs/cli.md
    python tools/gen_cli_md.py --check    # CI / tests: is docs/cli.md current?
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMMANDS = ("train", "eval", "info", "sensitivity", "prune", "select-coreset", "export")
DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEAD = ("# CLI reference\n\nGenerated from `mbq CMD --help` by `python tools/gen_cli_md.py`. Common to "
        "every command: `--json`, `--quiet`, `--device`, `--seed`; exit codes 0 ok, 1 run failed, "
        "2 bad input, 130 interrupted. Before the command: `mbq --threads N CMD ...` sets the process's "
        "CPU threads (default one per core; split the cores between runs that share a machine).\n")


def render() -> str:
    env = dict(os.environ, COLUMNS="100", TERM="dumb", NO_COLOR="1")
    parts = [HEAD]
    for cmd in COMMANDS:
        text = subprocess.run([sys.executable, "-m", "mbq", cmd, "--help"], capture_output=True,
                              text=True, env=env, check=True).stdout
        text = "\n".join(line.rstrip() for line in text.rstrip().splitlines())
        parts.append(f"\n## mbq {cmd}\n\n```\n{text}\n```\n")
    return "".join(parts)


def main() -> int:
    new = render()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != new:
            print(f"{DOC} is out of date: run python tools/gen_cli_md.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
