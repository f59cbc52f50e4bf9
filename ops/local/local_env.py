"""The `.local/` files a local run shares with the commands run beside it.

`pedro-webhooks run` writes `run.env` (the URLs of the servers it started and of the processes
it runs) when it starts and removes it when it stops; it keeps the local webhook secrets in
`local-secrets.env` (mode 600). A command run from the project folder reads both for the
variables that are not set in its environment: the environment always wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RUN_ENV = "run.env"
SECRETS_ENV = "local-secrets.env"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Written with mode 600 from the start: it may hold credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.writelines(f"{name}={value}\n" for name, value in values.items())
    path.chmod(0o600)


@dataclass
class LocalEnvironment:
    folder: Path
    # variable -> the file it was read from (only those this process did not have)
    loaded: dict[str, Path] = field(default_factory=dict)

    def load(self) -> None:
        """Set the variables the files name and the environment lacks."""
        for name in (RUN_ENV, SECRETS_ENV):
            path = self.folder / name
            if not path.is_file():
                continue
            for variable, value in read_env_file(path).items():
                if not os.environ.get(variable) and value:
                    os.environ[variable] = value
                    self.loaded[variable] = path

    def holds_local_secret(self, variable: str) -> bool:
        """Is the variable's value the one `run` keeps in local-secrets.env? Read from that file
        (the environment lacked it), or set in the environment to that same value."""
        path = self.folder / SECRETS_ENV
        if self.loaded.get(variable) == path:
            return True
        value = os.environ.get(variable)
        return bool(value) and path.is_file() and read_env_file(path).get(variable) == value

    def origin(self, variable: str) -> str:
        """The variable's name, and the file it came from when it was not set."""
        path = self.loaded.get(variable)
        return f"{variable} (from {path})" if path else variable
