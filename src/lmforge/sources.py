"""Where a model source is on disk, and the tokenizer that goes with it.

Plain path logic (no torch), so the tokenizer stage can adopt a base model's tokenizer
without importing the model package. A source is a path, or `hf:ORG/NAME[@REVISION]`: a
Hub model fetched through huggingface_hub's cache, so a second use needs no network.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import UserError

HUB_PREFIX = "hf:"
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]  # no .bin/.pt copies


def local_path(source: str | Path) -> Path:
    """Where a model source is on disk: `hf:ORG/NAME[@REVISION]` is downloaded into (or found
    in) huggingface_hub's cache, anything else is a path already."""
    text = str(source)
    if not text.startswith(HUB_PREFIX):
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo, _, revision = text.removeprefix(HUB_PREFIX).partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES))
    except (OSError, HFValidationError) as e:  # the Hub's HTTP and cache errors are OSErrors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot fetch {text} from the Hugging Face Hub ({reason}); check the "
                        "name (and HF_TOKEN for a gated model), or pass a local directory"
                        ) from None


def find_tokenizer(source: Path) -> Path:
    """The tokenizer next to a model: its own dir (an export), else the nearest `tokenizer/`
    walking up (pretrain/tokenizer, then the run's)."""
    start = source if source.is_dir() else source.parent
    for directory in (start, *list(start.parents)[:3]):
        for candidate in (directory, directory / "tokenizer"):
            if (candidate / "tokenizer.json").is_file():
                return candidate
    raise UserError(f"no tokenizer.json found next to {source}; pass --tokenizer DIR "
                    "(the run's tokenizer directory)")
