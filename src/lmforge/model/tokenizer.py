"""Text in and out of a model: the HF tokenizer.json saved by the tokenizer stage."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import UserError


class TextCodec:
    """encode(str) -> ids without special tokens; decode(ids) -> str without them."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:
            raise UserError(f"{tokenizer_json} is not a tokenizer.json file ({e})") from None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


def load_tokenizer(path: str | Path) -> TextCodec:
    """From a tokenizer directory or a tokenizer.json file."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} not found; pass the run's tokenizer directory with --tokenizer")
    return TextCodec(file)
