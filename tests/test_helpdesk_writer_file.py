"""The shipped writer rewrites (examples/helpdesk/data/writer_rewrites.jsonl) cover the ablation's writer lever.

`benchmarks/ablation.py`'s `writer` lever reads SmolLM2-135M-Instruct's rewrites from this file with
no writer model: for seeds 0-2 every rewrite the lever asks for must be in it, for the seed prompt's
current text (a changed data file or prompts stage would make the lever fail, or silently use fewer).
"""

import importlib.util
from pathlib import Path

import pytest

from potstill import api
from potstill.config import load_config
from potstill.expand.rewrites import read_cache_file
from potstill.expand.writer import seed_sha, seed_text, writer_jobs

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ablation)
CONFIG = ROOT / "examples" / "helpdesk" / "config.yaml"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_file_covers_every_rewrite_the_lever_asks_for(tmp_path, seed):
    overrides = [f"run_dir={tmp_path}", f"seed={seed}", *ablation.LEVERS["writer"]]
    writer = load_config(CONFIG, overrides).expand.writer
    _, rows = read_cache_file(CONFIG.parent / writer.cache_file)
    train = api.stages(CONFIG, ["prompts"], overrides).split("train")
    jobs = writer_jobs(writer, train, seed)
    assert len(jobs) > 300  # a quarter of ~1,774 prompts
    missing = [r["id"] for r, _, sha in jobs if (r["id"], sha) not in rows]
    stale = [
        r["id"]
        for r, _, sha in jobs
        if (r["id"], sha) in rows and rows[(r["id"], sha)]["seed_sha"] != seed_sha(seed_text(r))
    ]
    assert not missing and not stale
