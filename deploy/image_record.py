"""Where `smvision image push` records what it pushed, for `deploy create` and `transform` to use.

One JSON file, `images.json`, in the user's config folder: `$SMVISION_CONFIG_DIR`, else
`$XDG_CONFIG_HOME/smvision`, else `~/.config/smvision`. It maps
`<account>/<region>/<processor>` to the image pushed last from this machine:

    {"images": {"123456789012/eu-west-1/cpu": {
        "uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/smvision:cpu-0.1.0-3f2a9c1b7d4e",
        "repository": "smvision", "tag": "cpu-0.1.0-3f2a9c1b7d4e", "version": "0.1.0",
        "source_digest": "3f2a...", "pushed_at": "2026-11-26T13:14:09Z"}}}
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILE_NAME = "images.json"


def config_dir() -> Path:
    """$SMVISION_CONFIG_DIR, else $XDG_CONFIG_HOME/smvision, else ~/.config/smvision."""
    if os.environ.get("SMVISION_CONFIG_DIR"):
        return Path(os.environ["SMVISION_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "smvision"


def record_path() -> Path:
    return config_dir() / FILE_NAME


def key(account: str, region: str, processor: str) -> str:
    return f"{account}/{region}/{processor}"


def _read() -> dict[str, Any]:
    try:
        document = json.loads(record_path().read_text())
    except FileNotFoundError:
        return {"images": {}}
    except (OSError, ValueError):
        return {"images": {}}  # unreadable or damaged: as if nothing were recorded (the next push rewrites it)
    if not isinstance(document, dict) or not isinstance(document.get("images"), dict):
        return {"images": {}}
    return document


def recorded(account: str, region: str, processor: str) -> dict[str, Any] | None:
    """What `image push` recorded for this account, region and processor, or None."""
    entry = _read()["images"].get(key(account, region, processor))
    return entry if isinstance(entry, dict) and entry.get("uri") else None


def record(account: str, region: str, processor: str, *, uri: str, repository: str, tag: str, version: str,
           source_digest: str, now: datetime | None = None) -> Path:
    """Record a pushed image (the file is replaced whole, so a reader never sees half of it)."""
    document = _read()
    document["images"][key(account, region, processor)] = {
        "uri": uri,
        "repository": repository,
        "tag": tag,
        "version": version,
        "source_digest": source_digest,
        "pushed_at": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".images-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as output:
            json.dump(document, output, indent=2, sort_keys=True)
            output.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
