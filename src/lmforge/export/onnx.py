"""ONNX export: one decoder graph for the prompt and every decode step, checked against torch.

    DIR/model.onnx            the graph, float32 (weights in model.onnx.data beside it when
                              they pass protobuf's 2 GB, as the exporter decides)
    DIR/model.int8.onnx       with --onnx-int8: ONNX Runtime's dynamic int8 quantization
    DIR/onnx_config.json      the graph's inputs and outputs, the model's shape, bos/eos and
                              stop ids, the parity figures (and the int8 perplexity delta)
    DIR/tokenizer.json, tokenizer_config.json, ...   copied as the HF export copies them

The cache goes in and out as optimum and onnxruntime-genai lay it out for a decoder, so one
graph serves the prefill (a past of length 0) and each decode step (new tokens after the
past); feed `present.N.*` back as the next `past_key_values.N.*`:

    input_ids                    int64    (batch, sequence)
    attention_mask               int64    (batch, total_sequence)   1 = token, 0 = padding
    position_ids                 int64    (batch, sequence)         RoPE position of each token
    past_key_values.N.key/value  float32  (batch, kv_heads, past_sequence, head_dim)
    logits                       float32  (batch, sequence, vocab)
    present.N.key/value          float32  (batch, kv_heads, past_sequence + sequence, head_dim)

total_sequence is past_sequence + sequence. A query sees a key whose mask is 1 and whose
position (cumsum(attention_mask) - 1) is not after its own (and inside the sliding window,
when the model has one), so left-padded batches work as they do in transformers.

Exporter: torch.onnx.export(dynamo=True) (torch.export, translated by onnxscript). On torch
2.13 it exports this graph with batch and both sequence axes dynamic, and ONNX Runtime runs
it at sequence 1 and past 0 although the trace saw 3 and 4, so the TorchScript exporter
(deprecated) was not needed. The traced module is `DecoderGraph`: the model's own modules
in a cache-in, cache-out forward, q/k/v and gate/up stacked into one matmul each.

Parity: before anything is written, ONNX Runtime (CPU) and the torch model with its own
KVCache run the same prefill and decode steps in float32; the largest |logit difference| of
each goes into onnx_config.json, and the export fails above 1e-4 (a graph that silently
differs from the model is worse than none).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.export.hf import TOKENIZER_FILES, special_token_ids
from lmforge.export.onnx_runner import CONFIG, GRAPH, OnnxDecoder, perplexity
from lmforge.io import atomic_path, atomic_write_json, fsync_dir
from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import MLP, Attention, Block, Decoder, RMSNorm, Transformer, apply_rope

INT8_GRAPH = "model.int8.onnx"
TOLERANCE = 1e-4  # max |logit difference| ONNX Runtime vs torch eager, float32
PROMPT_TOKENS, DECODE_STEPS, BATCH = 12, 4, 2  # what the parity check runs
MASKED = torch.finfo(torch.float32).min  # finite: a row with every key masked stays finite
ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}
PLAIN = (Transformer, Decoder, Block, Attention, MLP, RMSNorm, nn.Linear, nn.Embedding,
         nn.ModuleList)
# Checked on a text of our own when the user gives none: enough tokens for a stable figure.
EVAL_TEXT = (
    "The river rose in the night, and by morning the lower road was under water. People "
    "from the village carried chairs, books and bread up to the school on the hill, where "
    "the teacher had lit the stove. Nobody knew how long the rain would last. Some said two "
    "days, others a week; the old miller said the river would go down when it was ready. "
    "In the afternoon the children counted boats on the flooded fields and wrote the "
    "numbers on the blackboard, and the adults made soup for everyone."
)


def require_plain(model: Transformer, what: str) -> None:
    """A UserError unless the model is made of the plain modules an exporter translates."""
    if model.cfg.moe.enabled:
        raise UserError(f"{what} export does not cover mixture-of-experts models; "
                        "export with --format hf")
    from lmforge.model.lora import LoRALinear
    from lmforge.model.prompt_tuning import PromptEmbedding

    for name, module in model.named_modules():
        if type(module) in PLAIN:
            continue
        if isinstance(module, PromptEmbedding):
            hint = "prompt-tuned models export with --format hf (virtual tokens have no graph)"
        elif isinstance(module, LoRALinear):
            hint = "merge the adapter first (lmforge.model.lora.merge_lora)"
        else:
            hint = "export the uncompressed model (the one the compress stage started from)"
        raise UserError(f"{what} export needs plain nn.Linear/nn.Embedding modules, but "
                        f"{name} is a {type(module).__name__}; {hint}")


def stacked(linears: tuple[nn.Linear, ...]) -> nn.Linear:
    """One Linear whose output is the outputs of `linears` side by side (same input)."""
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    out = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=False)
    return out


class GraphBlock(nn.Module):
    """One decoder block, cache in and cache out (Block.forward writes a KVCache instead).
    It holds the block's modules but the stacked projections, not their parts, so the graph
    carries each weight once."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        attn, mlp = block.self_attn, block.mlp
        self.heads, self.kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.input_layernorm, self.q_norm, self.k_norm = block.input_layernorm, attn.q_norm, \
            attn.k_norm
        self.qkv = stacked((attn.q_proj, attn.k_proj, attn.v_proj))
        self.o_proj = attn.o_proj
        self.post_attention_layernorm = block.post_attention_layernorm
        self.gate_up = stacked((mlp.gate_proj, mlp.up_proj))
        self.down_proj = mlp.down_proj

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past_k: Tensor,
                past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, h_kv, d = self.heads, self.kv_heads, self.head_dim
        b, t, _ = x.shape
        q, k, v = self.qkv(self.input_layernorm(x)).view(b, t, h + 2 * h_kv, d).split(
            (h, h_kv, h_kv), dim=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v.transpose(1, 2)), dim=2)
        # grouped-query attention without repeating the cache: (B, H_kv, H / H_kv, T, S)
        q = q.reshape(b, h_kv, h // h_kv, t, d)
        scores = q @ k.unsqueeze(2).transpose(-1, -2) * d ** -0.5 + bias
        y = (scores.softmax(dim=-1) @ v.unsqueeze(2)).reshape(b, h, t, d)
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, h * d))
        gate, up = self.gate_up(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up), k, v


class DecoderGraph(nn.Module):
    """The traced function: (input_ids, attention_mask, position_ids, past) -> (logits,
    *present), the layout in the module docstring."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.embed_tokens, self.norm, self.lm_head = (model.model.embed_tokens,
                                                      model.model.norm, model.lm_head)
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)
        self.window = model.cfg.sliding_window
        self.blocks = nn.ModuleList(GraphBlock(b) for b in model.model.layers)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                past: list[Tensor]) -> tuple[Tensor, ...]:
        cos = self.rope_cos[position_ids].unsqueeze(2)
        sin = self.rope_sin[position_ids].unsqueeze(2)
        key_pos = (attention_mask.cumsum(-1) - 1)[:, None, :]
        query_pos = position_ids[:, :, None]
        seen = (key_pos <= query_pos) & (attention_mask[:, None, :] > 0)
        if self.window is not None:
            seen = seen & (key_pos > query_pos - self.window)
        bias = torch.where(seen, 0.0, MASKED)[:, None, None]  # (B, 1, 1, T, S)
        x = self.embed_tokens(input_ids)
        present: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, bias, past[2 * i], past[2 * i + 1])
            present += [k, v]
        return (self.lm_head(self.norm(x)), *present)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' notes (renamed axes, torchvision ops it skips, preprocessing
    advice): lmforge prints its own one-line summary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    caches = [f"{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{c}"
                                                                for c in caches)]
    return inputs, ["logits", *(f"present.{c}" for c in caches)]


def trace(model: Transformer, path: Path) -> None:
    """Write the graph of `model` (float32, eval) to `path` with dynamic batch and lengths."""
    from torch.export import Dim

    cfg = model.cfg
    batch, seq, past_len = Dim("batch"), Dim("sequence"), Dim("past_sequence")
    # example sizes of 2 and more: torch.export fixes axes it sees at 0 or 1
    b, t, p = 2, 3, 4
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.ones(b, p + t, dtype=torch.long)
    positions = torch.arange(p, p + t).repeat(b, 1)
    past = [torch.zeros(b, cfg.kv_heads, p, cfg.head_dim) for _ in range(2 * cfg.n_layers)]
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch,
                                                                  1: Dim("total_sequence")},
              "position_ids": {0: batch, 1: seq}, "past": [{0: batch, 2: past_len}] * len(past)}
    inputs, outputs = io_names(cfg.n_layers)
    with torch.no_grad(), quiet():
        program = torch.onnx.export(DecoderGraph(model).eval(), (ids, mask, positions, past),
                                    dynamo=True, dynamic_shapes=shapes, input_names=inputs,
                                    output_names=outputs, verbose=False)
    program.save(str(path))


def check_parity(model: Transformer, decoder: OnnxDecoder) -> dict[str, Any]:
    """ONNX Runtime vs the torch model (KVCache) on a prefill and decode steps; the largest
    |logit difference| of each, and a UserError above TOLERANCE."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    length = max(1, min(PROMPT_TOKENS, cfg.max_seq_len - DECODE_STEPS))
    steps = min(DECODE_STEPS, cfg.max_seq_len - length)
    tokens = torch.randint(0, cfg.vocab, (BATCH, length + steps), generator=gen)
    cache = KVCache(cfg, BATCH, max_len=length + steps)
    with torch.no_grad():
        ref = model(tokens[:, :length], cache=cache).logits.numpy()
        logits, past = decoder.step(tokens[:, :length].numpy(), decoder.empty_past(BATCH))
        prefill = float(abs(logits - ref).max())
        decode = 0.0
        for i in range(length, length + steps):
            ref = model(tokens[:, i:i + 1], cache=cache).logits.numpy()
            logits, past = decoder.step(tokens[:, i:i + 1].numpy(), past)
            decode = max(decode, float(abs(logits - ref).max()))
    figures = {"dtype": "float32", "batch": BATCH, "prompt_tokens": length, "decode_steps": steps,
               "max_abs_dlogit_prefill": prefill, "max_abs_dlogit_decode": decode,
               "tolerance": TOLERANCE, "max_abs_logit": float(abs(ref).max())}
    if not max(prefill, decode) <= TOLERANCE:  # NaN fails too
        raise UserError(f"ONNX Runtime's logits differ from torch's by up to "
                        f"{max(prefill, decode):.2e} (prefill {prefill:.2e}, decode "
                        f"{decode:.2e}; allowed {TOLERANCE:g}); nothing was written: report "
                        "it with the model's model_config.json")
    return figures


def measure_int8(work: Path, decoder: OnnxDecoder, ids: list[int]) -> dict[str, Any]:
    """Quantize the graph's matmul weights to int8 (activations quantized per batch at run
    time) and measure what it costs in perplexity on `ids`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(work / GRAPH, work / INT8_GRAPH, weight_type=QuantType.QInt8,
                         use_external_data_format=(work / f"{GRAPH}.data").exists())
    fp32, int8 = perplexity(decoder, ids), perplexity(OnnxDecoder(work / INT8_GRAPH), ids)
    return {"graph": INT8_GRAPH, "eval_tokens": len(ids), "ppl_fp32": fp32, "ppl_int8": int8,
            "ppl_delta": int8 - fp32, "ppl_delta_pct": 100 * (int8 - fp32) / fp32,
            "bytes": sum(f.stat().st_size for f in work.iterdir() if "int8" in f.name)}


def describe(decoder: OnnxDecoder) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs as ONNX Runtime reads them (names, dtypes, axes)."""
    def entry(arg: Any) -> dict[str, Any]:
        return {"name": arg.name, "dtype": ORT_DTYPES[arg.type], "shape": list(arg.shape)}

    session = decoder.session
    return {"inputs": [entry(i) for i in session.get_inputs()],
            "outputs": [entry(o) for o in session.get_outputs()]}


def opset(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def eval_ids(tokenizer_dir: Path, text: str, max_len: int) -> list[int]:
    from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

    ids = ChatTokenizer(tokenizer_dir).encode(text)[:max_len]
    if len(ids) < 2:
        raise UserError("the --eval-text encodes to fewer than 2 tokens; give a longer text")
    return ids


def export_onnx(model: Transformer, tokenizer_dir: Path, out: Path, int8: bool = False,
                eval_text: str | None = None) -> dict[str, Any]:
    """The whole ONNX directory; returns what went into onnx_config.json. The graphs are
    built and checked in a work folder and moved in only once they passed. The model is
    cast to float32 in place (the graph and its parity check are float32)."""
    from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

    require_plain(model, "ONNX")
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}; pip install 'lmforge[export]'")
    model = model.float().eval()
    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out) as tmp:
        work = Path(tmp)
        trace(model, work / GRAPH)
        decoder = OnnxDecoder(work / GRAPH)
        config: dict[str, Any] = {
            "format": 1, "graph": GRAPH,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "opset": opset(work / GRAPH),
            **describe(decoder),
            "model": {"vocab_size": cfg.vocab, "dim": cfg.dim, "n_layers": cfg.n_layers,
                      "n_heads": cfg.n_heads, "kv_heads": cfg.kv_heads,
                      "head_dim": cfg.head_dim, "max_seq_len": cfg.max_seq_len,
                      "sliding_window": cfg.sliding_window},
            "tokens": {**special_token_ids(tokenizer_dir),
                       "stop_ids": sorted(ChatTokenizer(tokenizer_dir).chat_stop_ids())},
            "parity": check_parity(model, decoder),
        }
        if int8:
            ids = eval_ids(tokenizer_dir, eval_text or EVAL_TEXT, cfg.max_seq_len)
            config["int8"] = measure_int8(work, decoder, ids)
        _move_in(work, out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            with atomic_path(out / name) as tmp_file:
                shutil.copyfile(tokenizer_dir / name, tmp_file)
    atomic_write_json(out / CONFIG, config)
    return config


def _move_in(work: Path, out: Path) -> None:
    """Every file of `work` into `out`, weights (.data) before the graphs that name them."""
    for path in sorted(work.iterdir(), key=lambda p: p.suffix == ".onnx"):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(path, out / path.name)
    fsync_dir(out)
