"""Token ids to text, one token at a time: whole characters only, stop strings held back.

Byte-level BPE can split one character over several tokens, so a token's text is only
released once the decoded string no longer ends in a partial character (U+FFFD); a few
prompt tokens are decoded along as context so tokenizers that drop a leading space on the
first token still space correctly (the approach of vLLM's incremental detokenizer).
Text that could be the start of a stop string is withheld until it either completes the
stop string (everything from it on is cut) or stops matching.
"""

from __future__ import annotations

from collections.abc import Callable

CONTEXT_TOKENS = 4


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], prompt: list[int],
                 stop: tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._ids = list(prompt[-CONTEXT_TOKENS:])
        self._prefix, self._read = 0, len(self._ids)
        self.stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self.stop), default=0)
        self._partial = [0] * len(self.stop)  # per stop string: the tail that begins it
        self.text = ""
        self._sent = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became final (maybe empty; always empty once a
        stop string was found)."""
        piece = "" if self.stopped else self._next_piece(token_id)
        if not piece:
            return ""
        search_from = max(0, len(self.text) - self._longest + 1)
        self.text += piece
        if not self.stop:
            return self._release(len(self.text))
        hits = [i for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._partial_stop(len(piece)))

    def finish(self) -> str:
        """Whatever was still held back, at the end of the sequence."""
        return self._release(len(self.text))

    def _next_piece(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def _partial_stop(self, added: int) -> int:
        """Length of the longest tail of the text that begins some stop string. Such a
        tail starts where one did before the `added` characters came, or later, so each
        position is tried at most once over the stream: hostile stop strings stay cheap."""
        text, end = self.text, len(self.text)
        for k, stop in enumerate(self.stop):
            i = text.find(stop[0], max(end - added - self._partial[k], end - len(stop) + 1, 0))
            while i >= 0 and not stop.startswith(text[i:]):
                i = text.find(stop[0], i + 1)
            self._partial[k] = end - i if i >= 0 else 0
        return max(self._partial)

    def _release(self, end: int) -> str:
        end = max(end, self._sent)
        out = self.text[self._sent:end]
        self._sent = end
        return out
