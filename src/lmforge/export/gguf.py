"""GGUF export: one file llama.cpp (and ollama, LM Studio) loads, written with the `gguf` package.

    DIR/model.gguf     architecture "llama": metadata, tokenizer and tensors in one file

What goes in, as llama.cpp's convert_hf_to_gguf.py writes a Llama:

    general.architecture = llama, general.name, general.file_type, general.quantization_version
    llama.context_length, embedding_length, block_count, feed_forward_length, vocab_size,
          attention.head_count, attention.head_count_kv, attention.layer_norm_rms_epsilon,
          attention.key_length/value_length (head_dim), rope.freq_base, rope.dimension_count,
          rope.scaling.type/factor (linear scaling only)
    tokenizer.ggml.model = gpt2 (byte-level BPE), .pre, .tokens, .token_type, .merges,
          .bos/eos/padding/eot_token_id, .add_bos_token = false (lmforge's prompts carry
          their bos through the chat template), tokenizer.chat_template (without the
          `{% generation %}` training markers, which render their body unchanged)

Tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output; no
output when the head is tied to the embedding, llama.cpp then reuses token_embd). llama.cpp
rotates query/key pairs (i, i + 1) where HF rotates (i, i + head_dim/2), so attn_q and attn_k
(weights and biases) are permuted per head exactly as convert_hf_to_gguf.py's
LlamaModel.permute does. Types: f16 keeps 1-D tensors (norms, biases) in f32 and stores
matrices in f16; q8_0 stores matrices in blocks of 32 (an f16 scale and 32 int8) through
gguf.quants.quantize, in f16 when a row is not a multiple of 32 long, as llama.cpp does.

The pre-tokenizer: lmforge's byte-level BPE splits text like llama.cpp's "qwen2" pre-type
(GPT-4-style words and contractions, one digit per piece), except that lmforge also keeps
runs of CJK characters apart from adjacent Latin letters; a plain GPT-2 byte-level BPE is
"gpt-2". Any other tokenizer (a char tokenizer, SentencePiece) is refused: llama.cpp would
tokenize with rules other than the model was trained on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import UserError
from lmforge.export.hf import special_token_ids
from lmforge.export.onnx import require_plain
from lmforge.io import atomic_path
from lmforge.model.hf import to_hf_state_dict
from lmforge.model.llama import Transformer
from lmforge.tokenizer.train import BPE_PATTERN

GGUF_FILE = "model.gguf"
TYPES = ("f16", "q8_0")
Q8_BLOCK = 32  # values per q8_0 block (gguf.GGML_QUANT_SIZES)
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def permute(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """HF's rotate-half query/key rows to llama.cpp's adjacent pairs (convert_hf_to_gguf.py's
    LlamaModel.permute, the same arithmetic)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def check_supported(model: Transformer) -> None:
    require_plain(model, "GGUF")
    cfg = model.cfg
    unsupported = {"qk_norm": cfg.qk_norm, "sliding_window": cfg.sliding_window is not None,
                   "llama3 rope_scaling": cfg.rope_scaling is not None
                   and cfg.rope_scaling.type != "linear"}
    named = [name for name, present in unsupported.items() if present]
    if named:
        raise UserError(f"GGUF's llama architecture has no {', '.join(named)}; export this "
                        "model with --format hf or --format onnx")


def gguf_tensors(model: Transformer, kind: str) -> list[tuple[str, np.ndarray, Any]]:
    """(llama.cpp name, data, raw dtype or None) for every tensor, in HF name order."""
    import gguf

    cfg = model.cfg
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layers)
    out = []
    for hf_name, tensor in sorted(to_hf_state_dict(model.state_dict(), cfg).items()):
        data = tensor.detach().float()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, cfg.n_heads, cfg.n_heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, cfg.n_heads, cfg.kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF has no llama tensor for {hf_name}; export with --format hf")
        array = data.numpy()
        if array.ndim == 1:
            out.append((name, array.astype(np.float32), None))
        elif kind == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            out.append((name, gguf.quants.quantize(array, q8), q8))
        else:
            out.append((name, array.astype(np.float16), None))
    return out


def pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer type for a byte-level BPE tokenizer.json (see docstring)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    if [s.get("type") for s in steps] == ["Split", "ByteLevel"] and \
            steps[0].get("pattern", {}).get("Regex") == BPE_PATTERN:
        return "qwen2"
    if [s.get("type") for s in steps] == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise UserError("GGUF export knows lmforge's byte-level BPE and GPT-2's; this tokenizer "
                    "splits text otherwise, so llama.cpp would tokenize it differently; "
                    "export with --format hf or --format onnx")


def vocabulary(tokenizer_dir: Path, vocab_size: int) -> dict[str, Any]:
    """tokens, token types and merges for tokenizer.ggml.*, as convert_hf_to_gguf.py's
    get_vocab_base lists them: ids the tokenizer lacks (an embedding padded past it) become
    [PADi] UNUSED, special added tokens CONTROL, other added tokens USER_DEFINED."""
    import gguf
    from tokenizers import Tokenizer

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE":
        kind = spec.get("model", {}).get("type")
        raise UserError(f"GGUF export needs a byte-level BPE tokenizer, this one is {kind} "
                        "(a char tokenizer?); train with tokenizer.type: bpe, or export with "
                        "--format hf or --format onnx")
    pre = pre_tokenizer(spec)
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)}, the model only "
                        f"{vocab_size} embeddings; pass the model's own --tokenizer")
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else
                         gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def chat_template(tokenizer_dir: Path) -> str | None:
    """The tokenizer's template without transformers' `{% generation %}` markers: they
    render their body unchanged, and llama.cpp's Jinja does not know the tag."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    file = tokenizer_dir / "chat_template.jinja"
    if not template and file.is_file():
        template = file.read_text(encoding="utf-8")
    return GENERATION_TAG.sub("", template) if template else None


def export_gguf(model: Transformer, tokenizer_dir: Path, out: Path, kind: str = "f16",
                name: str = "lmforge") -> dict[str, Any]:
    """DIR/model.gguf, written atomically; returns what was written."""
    import gguf

    if kind not in TYPES:
        raise UserError(f"--gguf-type {kind!r} is not one of {', '.join(TYPES)}")
    check_supported(model)
    cfg = model.cfg
    vocab = vocabulary(tokenizer_dir, cfg.vocab)
    ids = special_token_ids(tokenizer_dir)
    tensors = gguf_tensors(model, kind)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / GGUF_FILE) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16"
                             else gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.dim)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.hidden_dim)
        writer.add_vocab_size(cfg.vocab)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.kv_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.head_dim)
        if cfg.rope_scaling is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(cfg.rope_scaling.factor)
        _add_tokenizer(writer, vocab, ids, chat_template(tokenizer_dir))
        for tensor_name, data, raw_dtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"file": GGUF_FILE, "type": kind, "tensors": len(tensors),
            "bytes": (out / GGUF_FILE).stat().st_size, "pre_tokenizer": vocab["pre"]}


def _add_tokenizer(writer: Any, vocab: dict[str, Any], ids: dict[str, int | None],
                   template: str | None) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id), ("end_of_turn", writer.add_eot_token_id)):
        if ids.get(role) is not None:
            add(ids[role])
    writer.add_add_bos_token(False)
    if template:
        writer.add_chat_template(template)
