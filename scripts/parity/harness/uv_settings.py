"""The environment that makes uv use what this machine's pip is configured with.

uv reads its own settings (UV_* variables, uv.toml), not pip's. A machine that reaches
its packages through a mirror, a proxy with its own CA, or a local wheel directory has
told pip so (pip.conf or PIP_* variables); the repository names no index, so
scripts/parity/bootstrap.py and parity lock translate pip's effective configuration,
read at run time with `pip config list`, into uv's. A uv setting already in the
environment wins.
"""

from __future__ import annotations

import ast
import os
import subprocess

# pip's option → uv's variable. Both index variables take space-separated URLs, as pip's.
PIP_TO_UV = {
    "index-url": "UV_INDEX_URL",
    "extra-index-url": "UV_EXTRA_INDEX_URL",
    "find-links": "UV_FIND_LINKS",
    "cert": "SSL_CERT_FILE",
    "trusted-host": "UV_INSECURE_HOST",
    "timeout": "UV_HTTP_TIMEOUT",
    "default-timeout": "UV_HTTP_TIMEOUT",
}


def pip_configuration(python: str) -> dict[str, str]:
    """pip's effective options, e.g. {"cert": "/etc/ssl/certs/ca-certificates.crt"}.

    `pip config list` prints one `section.option='value'` line per setting, files first
    and then `:env:` (PIP_* variables), so a later line overrides an earlier one."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    options: dict[str, str] = {}
    for line in listing.splitlines():
        name, separator, value = line.partition("=")
        if not separator:
            continue
        option = name.rsplit(".", 1)[-1]
        try:
            options[option] = str(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            options[option] = value.strip("'\"")
    return options


def uv_environment(python: str) -> dict[str, str]:
    """os.environ plus uv's equivalents of pip's configuration (existing ones kept)."""
    environment = dict(os.environ)
    for option, value in pip_configuration(python).items():
        variable = PIP_TO_UV.get(option)
        if variable is None or variable in environment:
            continue
        if variable == "UV_FIND_LINKS":
            # pip separates several locations by whitespace, uv by commas.
            value = ",".join(value.split())
        environment[variable] = value
    return environment
