"""A built-in instruction set, `builtin:python-docs-qa`: questions about stdlib functions and
classes answered from their own docstrings (the demo's fine-tuning data, made offline from
the same corpus the demo pretrains on, so it is reproducible for a given Python build)."""

from __future__ import annotations

import re

from lmforge.finetune.examples import Example

NAME = "builtin:python-docs-qa"
MODULES = ("json", "os", "re", "math", "itertools", "functools", "collections", "string",
           "textwrap", "random", "statistics", "shutil", "pathlib", "datetime", "heapq",
           "bisect", "operator", "glob", "fnmatch", "difflib", "base64", "hashlib", "csv",
           "zlib", "copy")
MAX_ANSWER_CHARS = 240
QUESTIONS = ("What does {name} do?", "Explain {name} in one sentence.",
             "What is {name} for?")


def summary(doc: str) -> str:
    """The docstring's first paragraph on one line, cut after a sentence when long."""
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text.rfind(". ", 0, MAX_ANSWER_CHARS)
    return text[:cut + 1] if cut > 40 else text[:MAX_ANSWER_CHARS].rsplit(" ", 1)[0] + "..."


def examples() -> list[Example]:
    from lmforge.data.builtin import module_docs

    out = []
    for doc in module_docs(list(MODULES)):
        if doc.meta["kind"] not in ("function", "class"):
            continue
        name = doc.id.split(":", 1)[1]
        signature, _, body = doc.text.partition("\n")
        answer = summary(body)
        if len(answer) < 20:
            continue
        k = len(out)
        question = QUESTIONS[k % len(QUESTIONS)].format(name=name)
        if k % 4 == 3:  # some ask for the call signature instead
            question, answer = f"How do I call {name}?", f"`{name.rsplit('.', 1)[0]}."\
                f"{signature.strip()}`"
        out.append(Example(doc.id, [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}],
                           f"{NAME}/{name}"))
    return out
