"""TokenDataset validation and TokenLoader determinism, resume, sharding and mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.errors import UserError
from lmforge.io import atomic_write_json, read_json
from lmforge.tokenizer.dataset import TokenDataset
from lmforge.tokenizer.format import META, bin_path, idx_path, make_meta, split_record
from lmforge.tokenizer.loader import TokenLoader, eval_batches


def write_tokens(tokens_dir: Path, doc_lengths: list[int], vocab_size: int | None = None) -> Path:
    """A train split whose token at index i is i (so a row's first token is its offset)."""
    total = int(sum(doc_lengths))
    vocab_size = vocab_size or max(total + 1, 2**16 + 1)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    tokens_dir.mkdir(parents=True, exist_ok=True)
    (np.arange(total) % vocab_size).astype(dtype).tofile(bin_path(tokens_dir, "train"))
    np.concatenate([[0], np.cumsum(doc_lengths)]).astype("<u8").tofile(
        idx_path(tokens_dir, "train")
    )
    dtype_name = "uint16" if dtype == np.uint16 else "uint32"
    split = split_record(tokens_dir, "train", dtype_name, text_bytes=total * 3)
    atomic_write_json(
        tokens_dir / META, make_meta(vocab_size, {"eos": 0}, "0" * 64, {"train": split})
    )
    return tokens_dir


def random_docs(seed: int, count: int, low: int = 5, high: int = 200) -> list[int]:
    return np.random.default_rng(seed).integers(low, high, size=count).tolist()


@pytest.fixture
def corpus(tmp_path: Path) -> TokenDataset:
    return TokenDataset(write_tokens(tmp_path / "a", random_docs(0, 400)), "train")


def collect(loader: TokenLoader, steps: int) -> list[torch.Tensor]:
    return [loader.next_batch().x.clone() for _ in range(steps)]


# -- TokenDataset ---------------------------------------------------------------------


def test_dataset_maps_tokens_and_documents(corpus: TokenDataset) -> None:
    lengths = random_docs(0, 400)
    assert len(corpus) == sum(lengths)
    assert corpus.num_documents == 400
    assert corpus.tokens.dtype == np.uint32
    assert corpus.document(3).tolist() == list(range(sum(lengths[:3]), sum(lengths[:4])))


def test_truncated_bin_is_an_error_naming_the_file(tmp_path: Path) -> None:
    tokens_dir = write_tokens(tmp_path / "t", [10, 20, 30])
    data = bin_path(tokens_dir, "train").read_bytes()
    bin_path(tokens_dir, "train").write_bytes(data[:-4])
    with pytest.raises(UserError, match=r"train\.bin is truncated"):
        TokenDataset(tokens_dir, "train")


def test_corrupted_bin_fails_the_checksum(tmp_path: Path) -> None:
    tokens_dir = write_tokens(tmp_path / "t", [10, 20, 30])
    data = bytearray(bin_path(tokens_dir, "train").read_bytes())
    data[17] ^= 0xFF
    bin_path(tokens_dir, "train").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train\.bin is corrupted"):
        TokenDataset(tokens_dir, "train")
    assert len(TokenDataset(tokens_dir, "train", verify=False)) == 60


def test_meta_that_does_not_match_the_files_is_an_error(tmp_path: Path) -> None:
    tokens_dir = write_tokens(tmp_path / "t", [10, 20, 30])
    meta = read_json(tokens_dir / META)
    meta["splits"]["train"]["tokens"] = 61
    atomic_write_json(tokens_dir / META, meta)
    with pytest.raises(UserError, match=r"train\.bin is truncated"):
        TokenDataset(tokens_dir, "train")
    meta["splits"]["train"]["tokens"] = 60
    meta["dtype"] = "uint16"
    atomic_write_json(tokens_dir / META, meta)
    with pytest.raises(UserError, match=r"does not fit dtype"):
        TokenDataset(tokens_dir, "train")


def test_bad_index_and_missing_split_and_wrong_tokenizer(tmp_path: Path) -> None:
    tokens_dir = write_tokens(tmp_path / "t", [10, 20, 30])
    with pytest.raises(UserError, match="no split 'val'"):
        TokenDataset(tokens_dir, "val")
    other = tmp_path / "tok" / "tokenizer.json"
    other.parent.mkdir()
    other.write_text("{}")
    with pytest.raises(UserError, match="different tokenizer"):
        TokenDataset(tokens_dir, "train", tokenizer=other.parent)
    np.array([0, 30, 10, 60], dtype="<u8").tofile(idx_path(tokens_dir, "train"))
    with pytest.raises(UserError, match="out of order"):
        TokenDataset(tokens_dir, "train", verify=False)
    (tokens_dir / META).unlink()
    with pytest.raises(UserError, match=r"meta\.json not found"):
        TokenDataset(tokens_dir, "train")


# -- TokenLoader ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "packed"])
@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, mode: str, prefetch: int) -> None:
    a = TokenDataset(write_tokens(tmp_path / "a", random_docs(1, 150)), "train", name="a")
    b = TokenDataset(write_tokens(tmp_path / "b", random_docs(2, 60)), "train", name="b")
    kwargs = dict(
        batch_size=4,
        block_size=32,
        seed=7,
        mode=mode,
        prefetch=prefetch,
        schedule=[(0, {"a": 1, "b": 1}), (40, {"a": 1, "b": 4})],
    )
    full = collect(TokenLoader([a, b], **kwargs), 120)

    first = TokenLoader([a, b], **kwargs)
    head = collect(first, 33)
    state = first.state_dict()
    first.close()
    second = TokenLoader([a, b], **kwargs)
    second.load_state_dict(state)
    tail = collect(second, 87)
    assert state["step"] == 33
    assert all(torch.equal(x, y) for x, y in zip(full, head + tail, strict=True))


def test_state_dict_counts_consumed_not_prefetched_batches(corpus: TokenDataset) -> None:
    loader = TokenLoader(corpus, batch_size=2, block_size=16, mode="packed", prefetch=4)
    loader.next_batch()
    loader.next_batch()
    assert loader.state_dict()["step"] == 2
    assert loader.step == 2


def test_same_seed_same_batches_other_seed_differs(corpus: TokenDataset) -> None:
    one = collect(TokenLoader(corpus, 4, 16, seed=1, prefetch=0), 5)
    again = collect(TokenLoader(corpus, 4, 16, seed=1, prefetch=2), 5)
    other = collect(TokenLoader(corpus, 4, 16, seed=2, prefetch=0), 5)
    assert all(torch.equal(x, y) for x, y in zip(one, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(one, other, strict=True))


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_ranks_split_the_global_batch_without_overlap(corpus: TokenDataset, mode: str) -> None:
    world, batch = 4, 3
    ranks = [
        TokenLoader(corpus, batch, 16, seed=3, mode=mode, rank=r, world_size=world, prefetch=1)
        for r in range(world)
    ]
    single = TokenLoader(corpus, batch * world, 16, seed=3, mode=mode, prefetch=0)
    for _ in range(60):
        parts = [loader.next_batch().x for loader in ranks]
        starts = torch.cat(parts)[:, 0].tolist()
        assert len(set(starts)) == world * batch
        assert torch.equal(torch.cat(parts), single.next_batch().x)


def test_x_and_y_are_shifted_windows(corpus: TokenDataset) -> None:
    batch = TokenLoader(corpus, 8, 24, seed=0, prefetch=0).next_batch()
    assert batch.x.shape == batch.y.shape == (8, 24)
    assert batch.x.dtype == batch.y.dtype == torch.long
    assert torch.equal(batch.y[:, :-1], batch.x[:, 1:])
    assert torch.equal(batch.y[:, -1], batch.x[:, -1] + 1)


def test_packed_epoch_visits_every_window_once(corpus: TokenDataset) -> None:
    T, B = 16, 5
    windows = (len(corpus) - 1) // T
    steps_per_epoch = windows // B
    loader = TokenLoader(corpus, B, T, seed=4, mode="packed", prefetch=2)
    starts = torch.cat([loader.next_batch().x[:, 0] for _ in range(steps_per_epoch)]).tolist()
    assert len(starts) == len(set(starts)) == steps_per_epoch * B
    assert all(s % T == 0 and s // T < windows for s in starts)
    next_epoch = torch.cat([loader.next_batch().x[:, 0] for _ in range(steps_per_epoch)]).tolist()
    assert len(set(next_epoch)) == len(next_epoch)
    assert next_epoch != starts


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_positions_restart_at_each_document(corpus: TokenDataset, mode: str) -> None:
    offsets = np.asarray(corpus.doc_offsets, dtype=np.int64)
    batch = TokenLoader(corpus, 6, 64, seed=5, mode=mode, prefetch=0).next_batch()
    for row in range(6):
        index = batch.x[row].numpy()  # token value == its offset in the split
        doc = np.searchsorted(offsets, index, side="right") - 1
        assert batch.positions[row].tolist() == (index - offsets[doc]).tolist()
        assert batch.doc_ids[row].tolist() == (doc - doc[0]).tolist()
    assert (batch.positions == 0).any()


def test_mixture_matches_the_weights_over_a_long_run(tmp_path: Path) -> None:
    names = ("a", "b", "c")
    datasets = [
        TokenDataset(write_tokens(tmp_path / n, random_docs(i, 80)), "train", name=n)
        for i, n in enumerate(names)
    ]
    loader = TokenLoader(datasets, 8, 16, seed=9, weights={"a": 1, "b": 3, "c": 6}, prefetch=0)
    counts = np.zeros(3)
    for _ in range(2000):
        counts += np.bincount(loader.next_batch().sources.numpy(), minlength=3)
    shares = counts / counts.sum()
    assert np.all(np.abs(shares - [0.1, 0.3, 0.6]) < 0.02), shares


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_schedule_switches_at_the_configured_step(tmp_path: Path, mode: str) -> None:
    a = TokenDataset(write_tokens(tmp_path / "a", random_docs(1, 80)), "train", name="a")
    b = TokenDataset(write_tokens(tmp_path / "b", random_docs(2, 80)), "train", name="b")
    schedule = [(0, {"a": 1, "b": 0}), (37, {"a": 0, "b": 1}), (50, {"a": 1, "b": 1})]
    loader = TokenLoader([a, b], 4, 16, seed=0, mode=mode, schedule=schedule, prefetch=2)
    sources = [set(loader.next_batch().sources.tolist()) for _ in range(200)]
    assert all(s == {0} for s in sources[:37])
    assert all(s == {1} for s in sources[37:50])
    assert set().union(*sources[50:]) == {0, 1}
    assert loader.weights_at(36) == {"a": 1.0, "b": 0.0}
    assert loader.weights_at(37) == {"a": 0.0, "b": 1.0}


def test_bad_settings_are_user_errors(tmp_path: Path, corpus: TokenDataset) -> None:
    small = TokenDataset(write_tokens(tmp_path / "s", [10, 10]), "train", name="s")
    with pytest.raises(UserError, match="too small"):
        TokenLoader(small, 8, 16)
    with pytest.raises(UserError, match="no weight for 'b'"):
        TokenLoader([corpus, TokenDataset(corpus.dir, name="b")], 2, 8, weights={"a": 1})
    with pytest.raises(UserError, match="start at 0"):
        TokenLoader(corpus, 2, 8, schedule=[(5, [1.0])])
    with pytest.raises(UserError, match="rank"):
        TokenLoader(corpus, 2, 8, rank=2, world_size=2)
    state = TokenLoader(corpus, 2, 8, seed=1).state_dict()
    with pytest.raises(UserError, match="block_size=8"):
        TokenLoader(corpus, 2, 16, seed=1).load_state_dict(state)


def test_eval_batches_are_fixed_and_cover_the_split(corpus: TokenDataset) -> None:
    T = 32
    whole = list(eval_batches(corpus, 7, T))
    starts = torch.cat([b.x[:, 0] for b in whole]).tolist()
    assert starts == [w * T for w in range((len(corpus) - 1) // T)]
    picked = [b.x for b in eval_batches(corpus, 4, T, num_batches=3, seed=1)]
    again = [b.x for b in eval_batches(corpus, 4, T, num_batches=3, seed=1)]
    assert len(picked) == 3 and all(torch.equal(p, q) for p, q in zip(picked, again, strict=True))
    shards = [
        torch.cat([b.x[:, 0] for b in eval_batches(corpus, 4, T, rank=r, world_size=2)])
        for r in range(2)
    ]
    assert sorted(torch.cat(shards).tolist()) == starts
