"""The step registry: every per-document step by name, built in the configured order."""

import pickle
import pydoc_data.topics

from lmforge.data.config import PER_DOC_STEPS, DataConfig
from lmforge.data.document import Doc
from lmforge.data.steps import STEP_FACTORIES, build_steps


def test_every_per_document_step_is_registered():
    assert set(STEP_FACTORIES) == set(PER_DOC_STEPS)


def test_build_steps_follows_config_order_and_skips_global_steps():
    cfg = DataConfig(steps=["pii", "normalize", "quality", "exact_dedup", "near_dedup"])
    assert [step.name for step in build_steps(cfg)] == ["pii", "normalize", "quality"]
    assert [step.name for step in build_steps(DataConfig())] == list(PER_DOC_STEPS)


def test_steps_pickle_for_worker_processes():
    steps = build_steps(DataConfig())
    assert [s.name for s in pickle.loads(pickle.dumps(steps))] == list(PER_DOC_STEPS)


def test_default_chain_on_real_text_accounts_for_every_document():
    texts = list(pydoc_data.topics.topics.values())
    docs = [Doc(f"d{i}", text, "pydoc", f"topics:{i}") for i, text in enumerate(texts)]
    dropped = 0
    for step in build_steps(DataConfig()):
        result = step.process(docs)
        assert len(result.kept) + len(result.dropped) == len(docs)
        dropped += len(result.dropped)
        docs = result.kept
    assert docs and dropped
    assert len(docs) + dropped == len(texts)
    assert all(d.annotations["language"] == "en" for d in docs)
