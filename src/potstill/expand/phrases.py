"""Built-in phrase lists of the conversational expansions and the writer's instruction templates.

Generic chat phrasing written for potstill, not for any one task; every list can be replaced from
the config (``expand.wrap.greetings``, ``expand.compose.joiners``, ``expand.writer.instructions``...).
"""

from __future__ import annotations

GREETINGS = [
    "Hi!",
    "Hello,",
    "Hey there.",
    "Hi folks,",
    "Good day!",
    "Good afternoon.",
    "Hey,",
    "Hello again!",
    "Hi team,",
    "Evening!",
    "Howdy.",
    "Hiya,",
]

CONTEXTS = [
    "I've been stuck on this for a while.",
    "This came up at work today.",
    "I'm fairly new to all of this, so bear with me.",
    "I tried searching first but got a bit lost.",
    "A colleague asked me and I wasn't sure.",
    "Quick one before my next meeting.",
    "I'm putting together some notes for my team.",
    "Sorry if this was asked before.",
    "I want to double-check before I go ahead.",
    "Just trying to get this sorted today.",
    "I'm on my phone, so excuse the short message.",
    "Been meaning to ask about this.",
]

POLITENESS = [
    "Could you tell me,",
    "I was wondering,",
    "Sorry to bother you, but",
    "If you don't mind me asking,",
    "Would you be able to help?",
    "Can I ask something?",
    "Quick question:",
    "Could you help me out?",
    "Please help:",
    "I'd appreciate a hand with this:",
]

SIGNOFFS = [
    "Thanks!",
    "Thanks, bye.",
    "Many thanks.",
    "Appreciate it!",
    "Thank you so much.",
    "Thanks a lot!",
    "Any help is welcome.",
    "Thanks for your time.",
    "Much appreciated.",
    "ty",
]

JOINERS = [
    " Also, ",
    " And ",
    "\n",
    " Additionally, ",
    " Next question: ",
    " Related to that, ",
    " A second thing: ",
    "\n\nAlso: ",
    " While I'm at it, ",
    " Second question: ",
    " On another note, ",
    " And one more: ",
]

INTROS = [
    "A couple of questions.",
    "Two things:",
    "I have a few questions.",
    "Some questions for you:",
    "Bundling these together:",
    "Hoping you can help with these.",
]

# Held-out lists: the validation copies' wrappers and compositions (``expand.validation_phrases``).
# They share no phrase with the training lists above, so ``validation_expanded`` asks in chat phrasing
# that no training expansion used, as real users (and an OOD split) do.
VALIDATION_GREETINGS = ["Hello there.", "Hi all,", "Greetings,", "Hey hey!", "Hi again,", "Morning all."]
VALIDATION_CONTEXTS = [
    "My manager wants an answer by tonight.",
    "I read the docs but I'm still unsure.",
    "We're evaluating the product for our team.",
    "Asking on behalf of a client.",
    "This is for a report I'm writing.",
    "I got conflicting answers elsewhere.",
]
VALIDATION_POLITENESS = ["Just curious,", "Real quick,", "Hoping you can answer this:", "One question,", "Help me out:"]
VALIDATION_SIGNOFFS = [
    "Thank you!",
    "Thx.",
    "Talk soon.",
    "Grateful for any pointers.",
    "Have a good one!",
    "Bye for now.",
]
VALIDATION_JOINERS = [
    " Also wondering: ",
    " Next up: ",
    " And another thing, ",
    " What's more, ",
    " Lastly, ",
    " P.S. ",
]
VALIDATION_INTROS = ["Got two questions.", "Here goes:", "A few things to ask:", "Quick pair of questions:"]

_REPLY_ONLY = "Reply with the rewritten message only."

DEFAULT_INSTRUCTIONS = [
    {
        "name": "paraphrase",
        "method": "paraphrase",
        "template": "Rewrite the following user message so that it asks for exactly the same thing in different words. "
        f"{_REPLY_ONLY}\n\nMessage: {{prompt}}",
    },
    {
        "name": "casual",
        "method": "evolve",
        "template": "Rewrite the following user message the way a busy person would type it into a chat box: short, "
        f"informal, still asking for the same thing. {_REPLY_ONLY}\n\nMessage: {{prompt}}",
    },
    {
        "name": "specific",
        "method": "evolve",
        "template": "Rewrite the following user message so that it mentions one concrete detail of the user's own "
        f"situation while asking the same question. {_REPLY_ONLY}\n\nMessage: {{prompt}}",
    },
    {
        "name": "constraint",
        "method": "evolve",
        "template": "Rewrite the following user message, adding one reasonable requirement on the answer (for example "
        f"its length or its format) while keeping the question. {_REPLY_ONLY}\n\nMessage: {{prompt}}",
    },
]
