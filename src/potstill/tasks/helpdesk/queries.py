"""Deterministic user queries about KB facts, from phrasing templates (no answers in them).

- ``train``: training templates only (the unlabelled prompts a student is distilled on);
- ``test``: templates HELD OUT from training (different wording, same facts);
- ``ood``: other surface forms: typos, chit-chat around the question, two questions in one
  (two fact ids, category ``multi``) and hand-written phrasings no template produces;
- ``augment``: training templates with typos, filler/dropped words, chit-chat and two-question
  joins, only to train the reference teacher (its chit-chat and joiners differ from ``ood``'s).

A template holds ``{e}``, the entity's surface form: the plan name, the error code, or (limits,
policies, howto) one of the fact's ``mentions``. Plan templates are frames x attribute phrases
plus attribute-specific questions. Records: ``{"id", "prompt", "category", "facts"}``.
"""

from __future__ import annotations

import random

from .kb import Fact, KnowledgeBase

TRAIN, TEST = "train", "test"
PLAN_FRAMES = {
    TRAIN: [
        "What is the {a} of the {e} plan?",
        "What's the {a} for {e}?",
        "{e} plan {a}?",
        "Tell me the {a} of the {e} plan.",
        "Can you tell me the {a} on {e}?",
        "What {a} does the {e} plan have?",
        "I want to know the {a} of {e}.",
        "Could you give me the {a} of the {e} plan?",
        "What's the {e} plan's {a}?",
        "Quick question about {e}: what is the {a}?",
    ],
    TEST: [
        "I'd like to know the {a} for the {e} plan.",
        "Do you know the {a} of {e}?",
        "Please give me the {a} on the {e} plan.",
        "Any idea what the {a} of the {e} plan is?",
    ],
}
PLAN_ATTRS = {  # attribute phrases slotted into the frames
    "price": {TRAIN: ["price", "monthly price", "cost", "monthly fee"], TEST: ["monthly cost", "price per month"]},
    "storage": {TRAIN: ["storage limit", "storage", "storage space"], TEST: ["storage allowance", "amount of storage"]},
    "seats": {
        TRAIN: ["user limit", "seat limit", "maximum number of users"],
        TEST: ["number of users allowed", "max users"],
    },
    "support": {
        TRAIN: ["support level", "type of support", "customer support"],
        TEST: ["kind of support", "support option"],
    },
    "history": {
        TRAIN: ["version history", "version history retention", "history retention"],
        TEST: ["version history period", "length of version history"],
    },
}
SPECIFIC = {  # (category, attribute) -> whole-question templates
    ("plans", "price"): {
        TRAIN: [
            "How much does the {e} plan cost?",
            "How much is {e} per month?",
            "How much do I pay for {e}?",
            "What does {e} cost?",
            "What's the price tag of {e}?",
            "How expensive is the {e} plan?",
        ],
        TEST: ["What will the {e} plan cost me each month?", "How much would I pay for the {e} plan?"],
    },
    ("plans", "storage"): {
        TRAIN: [
            "How much storage do I get on {e}?",
            "How many GB come with the {e} plan?",
            "How much space does the {e} plan include?",
            "Storage on {e}: how much?",
            "How many gigabytes does {e} give me?",
        ],
        TEST: ["How much storage comes with {e}?", "What amount of space do I get with the {e} plan?"],
    },
    ("plans", "seats"): {
        TRAIN: [
            "How many users can I have on the {e} plan?",
            "How many people can use {e}?",
            "How many seats does the {e} plan include?",
            "How many members can a {e} workspace have?",
            "Max number of people on {e}?",
        ],
        TEST: ["How many users does {e} allow?", "Up to how many people can join the {e} plan?"],
    },
    ("plans", "support"): {
        TRAIN: [
            "What support do {e} customers get?",
            "How can {e} users contact support?",
            "What help is included with {e}?",
            "What kind of help do I get on the {e} plan?",
            "Who helps {e} customers when something breaks?",
        ],
        TEST: ["Which support comes with the {e} plan?", "How do I get support on {e}?"],
    },
    ("plans", "history"): {
        TRAIN: [
            "How long is version history kept on {e}?",
            "How long are old versions kept on {e}?",
            "How far back does version history go on the {e} plan?",
            "How many days of version history does {e} have?",
            "How long does {e} keep old versions of notes?",
        ],
        TEST: ["For how long does {e} keep version history?", "How long can I see old versions on the {e} plan?"],
    },
    ("errors", "meaning"): {
        TRAIN: [
            "What does error {e} mean?",
            "What is error {e}?",
            "I got error {e}. What does it mean?",
            "Meaning of error code {e}?",
            "Explain error {e}.",
            "What does the {e} error mean?",
            "Why am I seeing error {e}?",
            "What does {e} mean?",
            "What's error {e}?",
            "Error code {e}: what does it mean?",
            "Can you explain error {e}?",
            "What is the meaning of error {e}?",
            "I see error {e}. What does it mean?",
            "Error {e} keeps appearing. What is it?",
            "Got {e} just now. What does that error mean?",
            "What causes error {e}?",
            "Tell me about error {e}.",
            "What's the {e} error?",
            "Any idea what {e} means?",
            "Please explain the {e} error.",
            "What's going on with error {e}?",
        ],
        TEST: [
            "Can you explain what error code {e} means?",
            "What is the {e} error about?",
            "I keep seeing {e}, what does that mean?",
            "What does it mean when I get {e}?",
            "Could you tell me what {e} means?",
        ],
    },
    ("errors", "fix"): {
        TRAIN: [
            "How do I fix error {e}?",
            "How can I resolve error {e}?",
            "What should I do about error {e}?",
            "How to fix {e}?",
            "I got error {e}. How do I fix it?",
            "How do I get rid of error {e}?",
            "Solve error code {e}?",
            "How do I fix {e}?",
            "How can I resolve {e}?",
            "Error code {e}: how do I fix it?",
            "What's the solution for error {e}?",
            "Can you help me fix error {e}?",
            "I see error {e}. How can I fix it?",
            "Error {e} keeps appearing. How do I fix it?",
            "Got {e} just now. How do I fix that error?",
            "What can I do about {e}?",
            "Is there a fix for error {e}?",
            "Any solution for {e}?",
            "Please help, error {e}. How do I fix it?",
        ],
        TEST: [
            "What's the fix for the {e} error?",
            "I keep seeing {e}, how can I fix that?",
            "Any way to resolve the {e} error?",
            "How would I fix the {e} error?",
            "Tell me how to fix error {e}.",
        ],
    },
}
NOUN_FRAMES = {  # limits and policies: {e} is a noun-phrase mention
    TRAIN: [
        "What is the {e}?",
        "What's the {e}?",
        "Tell me the {e}.",
        "{e}?",
        "Can you tell me the {e}?",
        "What's the {e} in Quillkeep?",
        "Could you tell me the {e}?",
        "What is the {e} for Quillkeep?",
        "I need the {e}.",
        "What exactly is the {e}?",
        "Give me the {e}, please.",
        "Remind me of the {e}.",
    ],
    TEST: [
        "Do you know the {e}?",
        "I'd like to know the {e}.",
        "Please tell me the {e} for Quillkeep.",
        "What's your {e}?",
        "Any info on the {e}?",
    ],
}
HOWTO_FRAMES = {  # {e} is a verb-phrase mention
    TRAIN: [
        "How do I {e}?",
        "How can I {e}?",
        "What are the steps to {e}?",
        "How to {e}?",
        "I want to {e}. How?",
        "Steps to {e}?",
        "How would I {e}?",
        "What do I do to {e}?",
        "Can I {e}? How?",
        "What's the process to {e}?",
        "Help me {e}.",
        "Where do I go to {e}?",
        "Explain how to {e}.",
        "Show me the steps to {e}.",
        "Is it possible to {e}? How?",
        "Need to {e}, how?",
        "Walk me through how to {e}.",
        "What should I click to {e}?",
    ],
    TEST: [
        "What's the way to {e}?",
        "Could you show me how to {e}?",
        "Is there a way to {e}?",
        "Tell me how to {e}.",
        "Any tips to {e}?",
    ],
}
CHITCHAT = {  # (prefixes, suffixes); "augment" uses TRAIN's, "ood" uses TEST's
    TRAIN: (
        [
            "Hello! ",
            "Hi, ",
            "Hey there. ",
            "Good afternoon. ",
            "Sorry to bother you, ",
            "Morning! ",
            "Hi team, I have a question. ",
            "Hello, I'm new to Quillkeep. ",
            "Hey! Hope you're fine. ",
            "I have a Quillkeep account. ",
            "Hello support, ",
        ],
        ["", " Thank you.", " Thanks a lot!", " Appreciate it.", " Thanks so much for your help!"],
    ),
    TEST: (
        [
            "Hi there! Hope your day is going well. ",
            "Good morning! Quick question for you. ",
            "Hey, thanks for the help earlier. ",
            "I've used Quillkeep for a while and love it. ",
        ],
        ["", " Cheers.", " Thanks in advance!"],
    ),
}
JOINERS = {
    TRAIN: [
        " Also, ",
        " And ",
        " Another question: ",
        " ",
        " Second question: ",
        " Besides that, ",
        " In addition, ",
        " Then, ",
    ],
    TEST: [" Oh, and ", " Plus, ", " One more thing: ", " Separately, "],
}
FREEFORM = [  # OOD phrasings no template produces: (prompt, fact ids)
    ("I'm on a tight budget. What would Starter set me back each month?", ["plans.starter.price"]),
    ("Our agency is growing to about 40 people; how many users can the Team plan take?", ["plans.team.seats"]),
    ("We store a lot of video. How big is the storage on Enterprise?", ["plans.enterprise.storage"]),
    ("On the Free plan, how far back can I roll a note?", ["plans.free.history"]),
    ("If something breaks and I'm on Team, how do I reach a human?", ["plans.team.support"]),
    ("Pro vs my budget: what's the damage per month?", ["plans.pro.price"]),
    ("Is the Free tier really free? What does it cost?", ["plans.free.price"]),
    ("How many of my colleagues could share a Pro subscription?", ["plans.pro.seats"]),
    ("Starter: how many gigs of space?", ["plans.starter.storage"]),
    ("Does Enterprise come with someone assigned to help us?", ["plans.enterprise.support"]),
    ("My PDF is pretty big, what's the biggest file Quillkeep accepts?", ["limits.file_upload_size.limit"]),
    ("How many calls per minute can my script make to your API?", ["limits.api_rate_limit.limit"]),
    ("Is there a ceiling on how many tags I can stick on a single note?", ["limits.tag_limit.limit"]),
    ("I write very long notes. How many characters fit in one note?", ["limits.note_length.limit"]),
    ("Can I sign in on all my gadgets? How many devices are allowed?", ["limits.device_limit.limit"]),
    ("How many outside collaborators can I add to one notebook as guests?", ["limits.guest_limit.limit"]),
    ("How deep can I nest pages inside pages?", ["limits.page_nesting_depth.limit"]),
    ("If I export everything at once, how many notes will one export hold?", ["limits.export_limit.limit"]),
    ("I bought Pro yesterday and regret it. How long do I have to ask for my money back?", ["policies.refund.policy"]),
    ("How many days do I get to try Quillkeep before paying?", ["policies.trial.policy"]),
    ("After I cancel, how long before my notes are gone for good?", ["policies.retention.policy"]),
    ("I deleted a note by mistake last week. How long does the trash keep it?", ["policies.trash.policy"]),
    ("How long does my password need to be?", ["policies.password.policy"]),
    ("Do I save anything by paying yearly instead of monthly?", ["policies.annual_discount.policy"]),
    ("I'm a university student, any discount for me?", ["policies.student_discount.policy"]),
    ("We're a registered charity. Do you offer a discount?", ["policies.nonprofit_discount.policy"]),
    ("How reliable is the service, what uptime do you promise?", ["policies.uptime.policy"]),
    ("Where physically are the servers that hold my data?", ["policies.datacenter.policy"]),
    ("How often do you back up my notes?", ["policies.backup.policy"]),
    ("The app just threw E302 at me and nothing syncs. What is going on?", ["errors.e302.meaning"]),
    ("Getting E601 when I try to pay, what should I do?", ["errors.e601.fix"]),
    ("E501 keeps popping up in my integration logs. Why?", ["errors.e501.meaning"]),
    ("Upload fails with E202. How do I get past it?", ["errors.e202.fix"]),
    ("My coworker sees E401 when opening our notebook. What does that mean?", ["errors.e401.meaning"]),
    ("Stuck on E101 every morning, how do I get rid of it?", ["errors.e101.fix"]),
    ("What is E802 telling me?", ["errors.e802.meaning"]),
    ("The import fails with E701, how do I get my notes in?", ["errors.e701.fix"]),
    ("A new hire starts Monday, how do I bring her into our workspace?", ["howto.invite.steps"]),
    ("I need my notebook as a file for a client. How?", ["howto.export.steps"]),
    ("Oops, I trashed a note I still need. Can I get it back?", ["howto.restore.steps"]),
    ("I want extra security on my login, how do I switch on 2FA?", ["howto.2fa.steps"]),
    ("How do I get Quillkeep messages into our Slack?", ["howto.slack.steps"]),
    ("I forgot my password and can't log in. Help?", ["howto.password.steps"]),
    ("I'm leaving Quillkeep. How do I get rid of my account entirely?", ["howto.delete_account.steps"]),
]
FILLERS = ["please", "actually", "exactly", "again", "now", "really", "currently", "so", "just"]
_DROPPABLE = {
    "the",
    "a",
    "an",
    "of",
    "for",
    "on",
    "is",
    "me",
    "you",
    "can",
    "could",
    "do",
    "does",
    "i",
    "my",
    "what",
    "what's",
    "tell",
    "please",
}
_QWORDS = {
    "what",
    "what's",
    "how",
    "can",
    "tell",
    "is",
    "could",
    "do",
    "please",
    "why",
    "explain",
    "meaning",
    "steps",
    "solve",
    "any",
    "for",
    "up",
    "which",
}
_KEYS = "qwertyuiop asdfghjkl zxcvbnm"


def templates(fact: Fact, split: str) -> list[str]:
    """Templates (with ``{e}``) that ask about ``fact``'s attribute in ``split`` (train/test)."""
    side = TRAIN if split == TRAIN else TEST
    out = list(SPECIFIC.get((fact.category, fact.attribute), {}).get(side, []))
    if fact.category == "plans" and fact.attribute in PLAN_ATTRS:
        phrases = PLAN_ATTRS[fact.attribute]
        combos = (
            [(f, a) for f in PLAN_FRAMES[TRAIN] for a in phrases[TRAIN]]
            if side == TRAIN
            else (
                [(f, a) for f in PLAN_FRAMES[TEST] for a in phrases[TRAIN] + phrases[TEST]]
                + [(f, a) for f in PLAN_FRAMES[TRAIN] for a in phrases[TEST]]
            )
        )
        out += [f.replace("{a}", a) for f, a in combos]
    elif fact.category == "howto":
        out += HOWTO_FRAMES[side]
    elif not out:
        out += NOUN_FRAMES[side]
    return out


def _render(template: str, surface: str) -> str:
    text = template.replace("{e}", surface)
    return text[:1].upper() + text[1:]


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("swap", "drop", "double", "key"))
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "key":  # a neighbouring key on the same keyboard row
        c = word[i].lower()
        row = next((r for r in _KEYS.split() if c in r), c)
        return word[:i] + row[max(0, min(len(row) - 1, row.index(c) + rng.choice((-1, 1))))] + word[i + 1 :]
    return word[:i] + (word[i] * 2 if op == "double" else "") + word[i + 1 :]


def add_typos(template: str, rng: random.Random, n: int = 1) -> str:
    """Corrupt ``n`` template words of 4+ letters (never the ``{e}`` slot) with keyboard typos."""
    words = template.split(" ")
    idx = [i for i, w in enumerate(words) if len(w.rstrip("?.,!")) >= 4 and w.rstrip("?.,!").isalpha()]
    for i in rng.sample(idx, min(n, len(idx))):
        core = words[i].rstrip("?.,!")
        words[i] = _typo(core, rng) + words[i][len(core) :]
    return " ".join(words)


def reword(template: str, rng: random.Random) -> str:
    """Maybe drop a function word, maybe insert a filler word (never touching ``{e}``)."""
    words = template.split(" ")
    droppable = [i for i, w in enumerate(words) if w.lower() in _DROPPABLE]
    if droppable and rng.random() < 0.5:
        words.pop(rng.choice(droppable))
    if rng.random() < 0.7:
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    return " ".join(words)


def _one(fact: Fact, split: str, rng: random.Random, typos: int = 0, noise: bool = False) -> str:
    template = rng.choice(templates(fact, split))
    if noise:
        template = reword(template, rng)
    if typos:
        template = add_typos(template, rng, typos)
    return _render(template, rng.choice(fact.mentions or (fact.entity,)))


def _lower_head(text: str) -> str:
    return text[:1].lower() + text[1:] if text.split(" ", 1)[0].lower() in _QWORDS else text


def _balanced(facts: list[Fact], n: int, rng: random.Random) -> list[Fact]:
    out: list[Fact] = []
    while len(out) < n:
        out += rng.sample(facts, len(facts))
    return out[:n]


def _noisy(kb: KnowledgeBase, kind: str, side: str, rng: random.Random) -> tuple[str, list[Fact]]:
    """One prompt of ``kind`` (typo/chitchat/multi/reword/mixed); train templates (+ test if ood)."""
    split = TRAIN if side == TRAIN or rng.random() < 0.5 else TEST
    fact = rng.choice(kb.facts)
    if kind == "multi":
        other = rng.choice([f for f in kb.facts if f.id != fact.id])
        prompt = _one(fact, split, rng) + rng.choice(JOINERS[side]) + _lower_head(_one(other, split, rng))
        return prompt, [fact, other]
    prompt = _one(
        fact,
        split,
        rng,
        typos=rng.choice((1, 1, 2)) if kind in ("typo", "mixed") else 0,
        noise=kind in ("reword", "mixed"),
    )
    if kind in ("chitchat", "mixed") and (kind == "chitchat" or rng.random() < 0.4):
        pre, post = CHITCHAT[side]
        prompt = rng.choice(pre) + _lower_head(prompt) + rng.choice(post)
    prompt = prompt.lower() if rng.random() < 0.25 else prompt
    prompt = prompt.rstrip("?.!") if rng.random() < 0.2 else prompt
    return prompt, [fact]


def _record(rid: str, prompt: str, facts: list[Fact]) -> dict:
    category = facts[0].category if len(facts) == 1 else "multi"
    return {"id": rid, "prompt": prompt, "category": category, "facts": [f.id for f in facts]}


def generate(kb: KnowledgeBase, split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` query records for ``split`` (train/test/ood/augment); same arguments, same output."""
    rng = random.Random(f"{split}:{seed}")
    if split in (TRAIN, TEST):
        seen: set[str] = set()
        out = []
        for i, fact in enumerate(_balanced(kb.facts, n, rng)):
            for _ in range(20):  # prefer a prompt not produced yet
                prompt = _one(fact, split, rng)
                if prompt not in seen:
                    break
            seen.add(prompt)
            out.append(_record(f"{split}-{i:05d}", prompt, [fact]))
        return out
    if split == "ood":
        free = [(p, ids) for p, ids in FREEFORM if all(i in kb.by_id for i in ids)][: n // 5]
        kinds = [("typo", "chitchat", "multi")[i % 3] for i in range(n - len(free))]
        rows = [(p, [kb.by_id[i] for i in ids], "free") for p, ids in free]
        rows += [(*_noisy(kb, k, TEST, rng), k) for k in kinds]
        rng.shuffle(rows)
        return [_record(f"ood-{k}-{i:05d}", p, fs) for i, (p, fs, k) in enumerate(rows)]
    if split == "augment":
        kinds = [rng.choice(("typo", "chitchat", "multi", "mixed", "reword")) for _ in range(n)]
        return [_record(f"aug-{i:05d}", *_noisy(kb, k, TRAIN, rng)) for i, k in enumerate(kinds)]
    raise ValueError(f"unknown split {split!r}: expected train, test, ood or augment")
