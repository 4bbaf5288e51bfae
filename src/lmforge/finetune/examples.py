"""Fine-tuning examples: JSONL records in any of three shapes, read as conversations.

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   OpenAI chat
    {"instruction": "...", "input": "...", "output": "..."}                          Alpaca
    {"prompt": "...", "completion": "..."}                                           pairs

Records are read by the data stage's reader (`ExampleReader` only changes what a record
must hold), so a bad line is quarantined with file:line and reason exactly as there, and
rows in = rows out: every line is an `Example` or a `Drop`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.data.config import SourceConfig
from lmforge.data.document import Doc, Drop
from lmforge.data.plan import plan_shards
from lmforge.data.readers import ShardReader
from lmforge.errors import UserError
from lmforge.finetune.config import Format

ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Example:
    id: str
    messages: list[dict[str, str]]
    location: str


def detect(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def to_messages(record: dict[str, Any], fmt: str) -> list[dict[str, str]] | str:
    """The conversation of a record, or what is wrong with it."""
    if fmt == "messages":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"message {i} needs a role of {', '.join(ROLES)}"
            if not isinstance(m.get("content"), str):
                return f"message {i} needs a string 'content'"
            out.append({"role": m["role"], "content": m["content"]})
        return out
    if fmt == "alpaca":
        fields = {k: record.get(k, "") for k in ("instruction", "input", "output")}
        if not all(isinstance(v, str) for v in fields.values()):
            return "'instruction', 'input' and 'output' must be strings"
        prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": fields["output"]}]
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return "'prompt' and 'completion' must be strings"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


class ExampleReader(ShardReader):
    """The data stage's JSONL reader, taking conversations instead of a text field."""

    def __init__(self, shard: Any, fmt: Format) -> None:
        super().__init__(shard, MAX_LINE_BYTES)
        self.fmt = fmt

    def make_doc(self, record: dict, location: str, fallback_id: str) -> Doc | Drop:
        raw = json.dumps(record, ensure_ascii=False, default=str)
        fmt = detect(record) if self.fmt == "auto" else self.fmt
        if fmt is None:
            return self.reject(location, "unknown_format", "no 'messages', 'instruction'/"
                               "'output' or 'prompt'/'completion' fields", raw)
        messages = to_messages(record, fmt)
        if isinstance(messages, str):
            return self.reject(location, f"bad_{fmt}", messages, raw)
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            return self.reject(location, "no_assistant_turn",
                               "nothing to learn: no assistant message with content", raw)
        raw_id = record.get("id")
        doc_id = str(raw_id) if isinstance(raw_id, str | int) and raw_id != "" else fallback_id
        return Doc(doc_id, raw, self.shard.source, location,
                   annotations={"messages": messages})


def read_examples(paths: list[str], fmt: Format) -> tuple[list[Example], list[Drop]]:
    """Every example of the files (in plan order) and every line that is not one."""
    if not paths:
        raise UserError("finetune.data is empty; list the JSONL files to fine-tune on")
    from lmforge.finetune import builtin_qa

    examples, drops = [], []
    if builtin_qa.NAME in paths:
        examples += builtin_qa.examples()
    sources = [SourceConfig(path=path, format="jsonl") for path in paths
               if path != builtin_qa.NAME]
    for shard in plan_shards(sources, 64.0):
        for record in ExampleReader(shard, fmt):
            if isinstance(record, Drop):
                drops.append(record)
            else:
                examples.append(Example(record.id, record.annotations["messages"],
                                        record.location))
    return examples, drops
