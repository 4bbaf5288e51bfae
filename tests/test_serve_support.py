"""Helpers for the engine and server tests (no tests here).

`make_model_dir(root)` writes root/tokenizer (a char tokenizer with the default chat
template) and root/model (a model dir) holding a tiny model trained for 150 steps (about
2 s) to answer three chat prompts and to continue one line of text, so outputs are
confident (greedy comparisons are not decided by rounding) and chat replies end with <|end|>.
"""

from __future__ import annotations

import pydoc_data.topics
import threading
import time
from pathlib import Path

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.files import save_model_dir
from lmforge.model.llama import Transformer
from lmforge.serve.config import ServeConfig
from lmforge.serve.metrics import Metrics
from lmforge.serve.server import uvicorn_config
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.train import save_tokenizer, train_char

DIALOGUES = {
    "hello": "hi there, how can I help?",
    "what is 2+2": "2+2 is 4.",
    "my email": "write to bob@example.com or call 415-555-2671.",
}
LINE = "the quick brown fox jumps over the lazy dog. "
MODEL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second one spins and stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chat_text(user: str, assistant: str) -> str:
    return f"<|bos|><|user|>\n{user}<|end|>\n<|assistant|>\n{assistant}<|end|>\n"


def corpus() -> list[str]:
    dialogues = [chat_text(u, a) for u, a in DIALOGUES.items()]
    return [*dialogues, LINE * 2, pydoc_data.topics.topics["if"][:400]]


def make_model_dir(root: Path, steps: int = 150, seed: int = 0) -> Path:
    """root/tokenizer and root/model; returns root/model."""
    cfg = TokenizerConfig(type="char")
    tokenizer = train_char(cfg, iter(corpus()))
    save_tokenizer(tokenizer, cfg, root / "tokenizer")
    model = train_tiny(tokenizer, steps, seed)
    save_model_dir(root / "model", model.state_dict(), model.cfg)
    return root / "model"


def train_tiny(tokenizer, steps: int, seed: int, lr: float = 1e-2) -> Transformer:
    torch.manual_seed(seed)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    model = Transformer(ModelConfig(vocab_size=vocab, **MODEL))
    docs = [tokenizer.encode(t, add_special_tokens=False).ids for t in corpus()]
    width = max(len(d) for d in docs[:-1]) + 1
    rows = [(d + [0] * width)[:width] for d in docs]
    batch = torch.tensor(rows)
    targets = batch[:, 1:].clone()
    for i, d in enumerate(docs):
        targets[i, len(d) - 1:] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(batch[:, :-1], targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class ServerThread:
    """uvicorn serving an app on a free port in a thread, configured as `lmforge serve`
    configures it (from the app's serve config and metrics, or `cfg` and `metrics` for an
    app without them); `stop()` shuts it down."""

    def __init__(self, app, cfg: ServeConfig | None = None, metrics: Metrics | None = None,
                 ) -> None:
        import uvicorn

        if cfg is None:
            cfg, metrics = app.state.lmforge.cfg, app.state.lmforge.metrics
        cfg = cfg.model_copy(update={"host": "127.0.0.1", "port": 0, "shutdown_timeout_s": 10})
        self.config = uvicorn_config(app, cfg, metrics, log_level="warning")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
