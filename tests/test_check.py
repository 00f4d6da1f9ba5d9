"""Tokenizer preflight (potstill.vocab, `potstill check`) on real tokenizer pairs built locally, the
path kd takes (token-level, padded and truncated, text-level), and KD's truncation of padded logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import CORPUS, OTHER_CORPUS, SPECIAL, build_tokenizer
from potstill.cli.main import main as cli_main
from potstill.config import KDSettings, config_from_dict
from potstill.errors import UserError
from potstill.models import load_model, load_tokenizer
from potstill.train import train_student
from potstill.vocab import compare_tokenizers, kd_path

LIVE, ULD = KDSettings(), KDSettings(cross_tokenizer="uld")


def build_unigram(out_dir: Path, corpus: list[str], vocab_size: int):
    """A SentencePiece-style Unigram tokenizer (Metaspace, <unk>): another tokenizer family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL, "<unk>"], unk_token="<unk>", show_progress=False
    )
    uni.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=uni,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[3:],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return out_dir


def _edit_tokenizer_json(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    edit(data)
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return dst


def _swap_two_ids(data):
    vocab = data["model"]["vocab"]
    a, b = "a", "b"  # two plain byte tokens of the BPE vocabulary
    vocab[a], vocab[b] = vocab[b], vocab[a]


def _resave(src: Path, dst: Path, change) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    change(tok)
    tok.save_pretrained(str(dst))
    return dst


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, make_tiny_llama, tiny_tokenizer_dir):
    """Tiny Llamas over real tokenizers: byte-level BPE (the default), BPE on another corpus, Unigram,
    and variants of the default one (ids swapped, an added token, another chat template / eos, a merge dropped)."""
    base = tmp_path_factory.mktemp("check")
    toks = base / "toks"
    toks.mkdir()
    n = len(load_tokenizer(tiny_tokenizer_dir))
    pad64 = -n % 64 or 64  # rows padded to the next multiple of 64
    build_unigram(toks / "unigram", CORPUS + OTHER_CORPUS, 200)
    _edit_tokenizer_json(tiny_tokenizer_dir, toks / "swapped", _swap_two_ids)
    _edit_tokenizer_json(tiny_tokenizer_dir, toks / "merge_dropped", lambda d: d["model"]["merges"].pop(0))
    _resave(tiny_tokenizer_dir, toks / "added", lambda t: t.add_tokens(["<|tool|>"]))
    _resave(
        tiny_tokenizer_dir,
        toks / "template",
        lambda t: setattr(t, "chat_template", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"),
    )
    _resave(tiny_tokenizer_dir, toks / "eos", lambda t: setattr(t, "eos_token", "<|end|>"))
    build_tokenizer(toks / "bpe_other", OTHER_CORPUS + CORPUS[:5], vocab_size=320)
    m = {
        "teacher": make_tiny_llama(base / "teacher", hidden=32, heads=4, seed=2),
        "student": make_tiny_llama(base / "student", seed=1),
        "teacher64": make_tiny_llama(base / "teacher64", hidden=32, heads=4, vocab_pad=pad64, seed=2),
        "student64": make_tiny_llama(base / "student64", vocab_pad=pad64, seed=1),
        "other": make_tiny_llama(base / "other", tokenizer="other", seed=1),
        "bpe_other": make_tiny_llama(base / "bpe_other", tokenizer=toks / "bpe_other", seed=1),
        "unigram": make_tiny_llama(base / "unigram", tokenizer=toks / "unigram", seed=1),
        "swapped": make_tiny_llama(base / "swapped", tokenizer=toks / "swapped", seed=1),
        "added": make_tiny_llama(base / "added", tokenizer=toks / "added", seed=1),
        "template": make_tiny_llama(base / "template", tokenizer=toks / "template", seed=1),
        "eos": make_tiny_llama(base / "eos", tokenizer=toks / "eos", seed=1),
        "merge_dropped": make_tiny_llama(base / "merge_dropped", tokenizer=toks / "merge_dropped", seed=1),
        "tok_only": tiny_tokenizer_dir,
    }
    m["n"], m["n64"] = n, n + pad64
    return m


# ---------------------------------------------------------------------------------------------
# Classification


def test_same(pairs_dir):
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["student"])
    assert m.kind == "same" and m.vocab_equal and m.special_tokens_equal and m.chat_template_equal and m.encoding_equal
    assert m.teacher_rows == m.student_rows == m.usable_vocab == m.teacher_vocab == pairs_dir["n"]
    assert m.teacher_fingerprint == m.student_fingerprint and not m.notes
    assert kd_path(m, LIVE) == ("kd", "kd: teacher and student share a tokenizer")
    assert kd_path(m, ULD)[0] == "kd"  # cross_tokenizer only matters when the tokenizers differ


@pytest.mark.parametrize(
    "teacher, student", [("teacher64", "student"), ("teacher", "student64"), ("teacher64", "tok_only")]
)
def test_padded_either_side(pairs_dir, teacher, student):
    m = compare_tokenizers(pairs_dir[teacher], pairs_dir[student])
    n, n64 = pairs_dir["n"], pairs_dir["n64"]
    assert n64 % 64 == 0 and n64 > n
    if student == "tok_only":  # a tokenizer-only directory: rows unknown, nothing to compare them with
        assert m.kind == "same" and m.student_rows is None and any("no config.json" in x for x in m.notes)
        return
    assert m.kind == "padded" and m.vocab_equal and m.usable_vocab == n
    assert {m.teacher_rows, m.student_rows} == {n, n64}
    path, msg = kd_path(m, LIVE)
    assert (
        path == "kd"
        and msg == f"kd: teacher and student share a tokenizer (padded embeddings: logits truncated to {n})"
    )
    assert kd_path(m, ULD)[0] == "kd"


def test_both_padded_alike_is_same(pairs_dir):
    m = compare_tokenizers(pairs_dir["teacher64"], pairs_dir["student64"])
    assert m.kind == "same" and m.usable_vocab == pairs_dir["n"] and m.teacher_rows == pairs_dir["n64"]
    assert any(f"the first {pairs_dir['n']}" in x for x in m.notes)


@pytest.mark.parametrize("student", ["other", "bpe_other", "unigram"])
def test_different_tokenizer_families(pairs_dir, student):
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir[student])
    assert m.kind == "different" and not m.vocab_equal and m.usable_vocab is None
    assert m.teacher_fingerprint != m.student_fingerprint
    assert m.vocab_diff["only_teacher"] > 0 and m.vocab_diff["only_student"] > 0
    assert kd_path(m, LIVE) == (
        "sft",
        "kd: tokenizers differ → text-level distillation (SFT on the teacher's "
        "answers); set train.kd.cross_tokenizer=uld for Universal Logit Distillation",
    )
    assert kd_path(m, ULD)[0] == "uld" and "ULD" in kd_path(m, ULD)[1]


def test_swapped_ids_are_different(pairs_dir):
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["swapped"])
    assert m.kind == "different" and m.teacher_vocab == m.student_vocab and m.teacher_rows == m.student_rows
    assert m.vocab_diff["moved"] == 2 and m.vocab_diff["only_teacher"] == m.vocab_diff["only_student"] == 0
    assert any("2 shared token(s) have different ids" in r and "'a'" in r for r in m.reasons)


@pytest.mark.parametrize("teacher, student", [("teacher", "added"), ("added", "teacher")])
def test_one_extra_added_token_is_different(pairs_dir, teacher, student):
    m = compare_tokenizers(pairs_dir[teacher], pairs_dir[student])
    assert m.kind == "different" and abs(m.teacher_vocab - m.student_vocab) == 1
    assert m.vocab_diff["moved"] == 0
    side = "only_student" if student == "added" else "only_teacher"
    assert m.vocab_diff[side] == 1 and m.vocab_diff["examples"][side][0][0] == "<|tool|>"


@pytest.mark.parametrize("teacher, kind", [("teacher", "same"), ("teacher64", "padded")])
def test_other_chat_template_is_a_note(pairs_dir, teacher, kind):
    m = compare_tokenizers(pairs_dir[teacher], pairs_dir["template"])
    assert m.kind == kind and m.vocab_equal and not m.chat_template_equal
    assert m.teacher_fingerprint != m.student_fingerprint
    assert any("chat templates differ" in x for x in m.notes)
    assert kd_path(m, LIVE)[0] == "kd"


def test_other_eos_and_other_merges_are_notes(pairs_dir):
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["eos"])
    assert m.kind == "same" and not m.special_tokens_equal
    assert any("special tokens differ" in x and "'</s>'" in x and "'<|end|>'" in x for x in m.notes)
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["merge_dropped"])
    assert m.kind == "same" and m.vocab_equal and not m.encoding_equal
    assert any("splits text differently" in x for x in m.notes)


def test_token_level_signals_with_different_tokenizers_are_errors(pairs_dir):
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["unigram"])
    for signal in ("topk", "store"):
        with pytest.raises(UserError) as info:
            kd_path(m, KDSettings(signal=signal))
        msg = str(info.value)
        assert msg.startswith("train.kd.signal:") and "token-level" in msg and "'sft'" in msg and "\n" not in msg
        assert str(pairs_dir["unigram"]) in msg
    with pytest.raises(UserError, match="train.kd.on_policy_ratio: .*share a tokenizer"):
        kd_path(m, KDSettings(on_policy_ratio=0.5))
    m = compare_tokenizers(pairs_dir["teacher"], pairs_dir["teacher64"])
    assert kd_path(m, KDSettings(signal="topk"))[0] == "kd"
    assert kd_path(m, KDSettings(on_policy_ratio=0.5))[0] == "kd"


def test_embedding_smaller_than_tokenizer_stops_kd(pairs_dir, tmp_path):
    short = shutil.copytree(pairs_dir["student"], tmp_path / "short")
    conf = json.loads((short / "config.json").read_text())
    conf["vocab_size"] = pairs_dir["n"] - 3
    (short / "config.json").write_text(json.dumps(conf))
    m = compare_tokenizers(pairs_dir["teacher"], short)
    assert m.kind == "padded" and m.usable_vocab == pairs_dir["n"] - 3
    assert any("cannot be fed" in x for x in m.notes)
    with pytest.raises(UserError, match="embedding has .* rows for a .*-token vocabulary"):
        kd_path(m, LIVE)


# ---------------------------------------------------------------------------------------------
# potstill check


def test_cli_check_prints_the_verdict(pairs_dir, capsys):
    assert cli_main(["check", str(pairs_dir["teacher64"]), str(pairs_dir["student"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict       padded:") and f"logits truncated to {pairs_dir['n']}" in out
    assert "(+" in out and "padding)" in out

    assert cli_main(["check", str(pairs_dir["teacher"]), str(pairs_dir["unigram"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict       different:")
    assert "cross_tokenizer=sft (the default) → sft: tokenizers differ → text-level" in out
    assert "cross_tokenizer=uld → uld:" in out

    assert cli_main(["check", str(pairs_dir["teacher"]), str(pairs_dir["template"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict       same:") and "chat templates differ" in out


def test_cli_check_json(pairs_dir, capsys):
    assert cli_main(["check", str(pairs_dir["teacher"]), str(pairs_dir["swapped"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "different" and d["vocab_diff"]["moved"] == 2 and d["teacher_rows"] == d["student_rows"]
    assert set(d) >= {
        "teacher_fingerprint",
        "student_fingerprint",
        "vocab_equal",
        "teacher_vocab",
        "student_vocab",
        "usable_vocab",
        "special_tokens_equal",
        "chat_template_equal",
        "reasons",
        "notes",
    }


@pytest.mark.parametrize("bad", ["missing", "empty", "broken", "bad_config"])
def test_cli_check_bad_dir_is_one_line(pairs_dir, tmp_path, capsys, bad):
    d = tmp_path / bad
    if bad != "missing":
        d.mkdir()
    if bad == "broken":
        (d / "tokenizer.json").write_text("{not json")
    if bad == "bad_config":
        for f in Path(pairs_dir["tok_only"]).iterdir():
            shutil.copy(f, d / f.name)
        (d / "config.json").write_text("{")
    assert cli_main(["check", str(pairs_dir["teacher"]), str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("potstill: error:") and str(d) in err[0]


# ---------------------------------------------------------------------------------------------
# Training: padded logits are truncated; kd with different tokenizers trains like sft


def _cfg(base: Path, student: Path, teacher: Path, methods=("kd",), **train) -> object:
    t = {
        "batch_size": 4,
        "epochs": 1,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 1000,
        "methods": list(methods),
        **train,
    }
    return config_from_dict(
        {
            "seed": 0,
            "prompts": {"sources": [{"path": "p.jsonl"}]},
            "teacher": {"model": str(teacher)},
            "student": {"model": str(student)},
            "train": t,
        },
        base_dir=base,
    )


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("teacher, student", [("teacher64", "student"), ("teacher", "student64")])
def test_kd_loss_truncates_padded_logits(pairs_dir, make_pairs, tmp_path, teacher, student, chunked):
    """The KD term compares the first len(tokenizer) logits of both sides; CE uses all student rows."""
    from transformers import TrainingArguments

    from potstill.train.data import Collator, build_features
    from potstill.train.trainer import DistillTrainer

    t_model, s_model = load_model(pairs_dir[teacher]), load_model(pairs_dir[student])
    tok = load_tokenizer(pairs_dir[student], padding_side="right")
    n, T, alpha = len(tok), 2.0, 0.5
    assert t_model.config.vocab_size != s_model.config.vocab_size
    feats = build_features(make_pairs(4), tok, 64, True)
    batch = Collator(tok.pad_token_id)(feats)
    trainer = DistillTrainer(
        model=s_model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
        train_dataset=feats,
        method="kd",
        teacher=t_model,
        kd=KDSettings(alpha=alpha, temperature=T),
        vocab_size=n,
        chunked=chunked,
    )
    loss = trainer.compute_loss(s_model, batch)
    with torch.no_grad():
        ids, att, labels = batch["input_ids"], batch["attention_mask"], batch["labels"][:, 1:]
        s = s_model(input_ids=ids, attention_mask=att).logits[:, :-1].double()
        t = t_model(input_ids=ids, attention_mask=att).logits[:, :-1].double()
        keep = labels != -100
        ce = F.cross_entropy(s[keep], labels[keep], reduction="sum")  # the student's full (padded) rows
        log_q, log_p = F.log_softmax(s[keep][:, :n] / T, -1), F.log_softmax(t[keep][:, :n] / T, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum()
        ref = (alpha * T * T * kl + (1 - alpha) * ce) / keep.sum()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("teacher, student", [("teacher64", "student"), ("teacher", "student64")])
def test_train_student_kd_with_padded_embeddings(pairs_dir, make_pairs, tmp_path, teacher, student):
    cfg = _cfg(tmp_path, pairs_dir[student], pairs_dir[teacher])
    m = train_student("kd", cfg, make_pairs(4), tmp_path / "out", tmp_path / "work")
    assert m["kd_path"] == "kd" and set(m["final_parts"]) == {"ce_per_token", "kd_per_token"}
    assert json.loads((tmp_path / "out" / "training.json").read_text())["kd_path"] == "kd"


def test_kd_with_different_tokenizers_trains_exactly_like_sft(pairs_dir, make_pairs, tmp_path, capsys):
    cfg = _cfg(tmp_path, pairs_dir["unigram"], pairs_dir["teacher"], epochs=2)
    kd = train_student("kd", cfg, make_pairs(4), tmp_path / "kd", tmp_path / "wkd")
    assert "kd: tokenizers differ → text-level distillation" in capsys.readouterr().err
    sft = train_student("sft", cfg, make_pairs(4), tmp_path / "sft", tmp_path / "wsft")
    assert kd["kd_path"] == "sft" and kd["method"] == "kd" and kd["response_ids"] == "re-tokenized"
    assert set(kd["final_parts"]) == {"ce_per_token"} and kd["loss_curve"] == sft["loss_curve"]
    assert json.loads((tmp_path / "kd" / "training.json").read_text())["kd_path"] == "sft"
    assert "trained text-level" in (tmp_path / "kd" / "README.md").read_text()  # the model card says so
    a, b = load_model(tmp_path / "kd"), load_model(tmp_path / "sft")
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name


def test_kd_with_different_tokenizers_and_uld_trains_with_the_uld_term(pairs_dir, make_pairs, tmp_path, capsys):
    from potstill.train.student import check_kd_tokenizers

    cfg = _cfg(tmp_path, pairs_dir["unigram"], pairs_dir["teacher"], kd={"cross_tokenizer": "uld"})
    assert check_kd_tokenizers(cfg)[0] == "uld"
    m = train_student("kd", cfg, make_pairs(4), tmp_path / "uld", tmp_path / "wuld")
    assert m["kd_path"] == "uld" and set(m["final_parts"]) == {"ce_per_token", "uld_per_token"}
    assert m["final_parts"]["uld_per_token"] > 0
    assert "ULD (L1 between sorted" in (tmp_path / "uld" / "README.md").read_text()
    assert "ULD" in capsys.readouterr().err


def test_run_preflight_says_which_path_kd_takes(pairs_dir, tmp_path, capsys):
    """`potstill run`'s preflight, then prompts → generate → train kd (text-level) on tiny data."""
    from potstill.pipeline import open_run, run_stages
    from potstill.pipeline import preflight as run_preflight

    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i} about plan {i * 7}"}) + "\n" for i in range(12))
    )
    base = {
        "run_dir": "run",
        "prompts": {"sources": [{"path": "p.jsonl"}], "test_fraction": 0.0},
        "teacher": {"model": str(pairs_dir["teacher64"]), "max_new_tokens": 4},
        "train": {"methods": ["kd"], "epochs": 1, "batch_size": 8},
    }

    def preflight(student, **kd):
        cfg = config_from_dict(
            {**base, "student": {"model": str(student), "init": "random"}, "train": {**base["train"], "kd": kd}},
            base_dir=tmp_path,
        )
        ctx = open_run(cfg)
        run_preflight(ctx)
        return ctx, capsys.readouterr().err

    _, err = preflight(pairs_dir["student"])
    assert f"kd: teacher and student share a tokenizer (padded embeddings: logits truncated to {pairs_dir['n']})" in err
    with pytest.raises(UserError, match="token-level"):
        preflight(pairs_dir["other"], signal="topk")
    p, err = preflight(pairs_dir["other"])
    line = (
        "kd: tokenizers differ → text-level distillation (SFT on the teacher's answers); "
        "set train.kd.cross_tokenizer=uld for Universal Logit Distillation"
    )
    assert line in err
    run_stages(p, ["prompts", "generate", "train"])
    m = json.loads((tmp_path / "run" / "students" / "kd" / "training.json").read_text())
    assert m["method"] == "kd" and m["kd_path"] == "sft" and set(m["final_parts"]) == {"ce_per_token"}


def test_padded_teacher_never_generates_padding_ids(pairs_dir, tiny_tokenizer_dir):
    """A padded teacher whose padding rows score high must still answer with real tokens only."""
    from potstill.teachers.base import GenerationSettings
    from potstill.teachers.hf import LocalGenerator

    n = pairs_dir["n"]
    model = load_model(pairs_dir["teacher64"])
    boost = torch.cat([torch.zeros(n), torch.full((pairs_dir["n64"] - n,), 100.0)])
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + boost)
    gen = LocalGenerator(pairs_dir["teacher64"], model=model, device="cpu")
    recs = list(
        gen.generate(
            [{"id": "a", "messages": [{"role": "user", "content": "What is two plus two?"}]}],
            GenerationSettings(max_new_tokens=3, top_logprobs=2),
        )
    )
    assert all(t < n for t in recs[0]["token_ids"])
    assert all(t < n for row in recs[0]["top_logprobs"] for t, _ in row)
