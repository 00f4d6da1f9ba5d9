"""Country-capital questions for the SmolLM2 recipe: train / test / OOD phrasings of the same facts.

Writes ``data/{train,test,ood}.jsonl`` (``prompt``, ``answer``, ``category``). Test asks the same
countries as train in phrasings training never sees; OOD wraps them in chatty, misspelled or
two-part messages. The scorer is the config's regex on the record's ``answer``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "the United Kingdom": "London",
    "Ireland": "Dublin",
    "Belgium": "Brussels",
    "the Netherlands": "Amsterdam",
    "Austria": "Vienna",
    "Switzerland": "Bern",
    "Poland": "Warsaw",
    "Czechia": "Prague",
    "Hungary": "Budapest",
    "Greece": "Athens",
    "Sweden": "Stockholm",
    "Norway": "Oslo",
    "Denmark": "Copenhagen",
    "Finland": "Helsinki",
    "Iceland": "Reykjavik",
    "Russia": "Moscow",
    "Romania": "Bucharest",
    "Bulgaria": "Sofia",
    "Serbia": "Belgrade",
    "Croatia": "Zagreb",
    "Turkey": "Ankara",
    "Egypt": "Cairo",
    "Morocco": "Rabat",
    "Kenya": "Nairobi",
    "Nigeria": "Abuja",
    "Ethiopia": "Addis Ababa",
    "Ghana": "Accra",
    "Japan": "Tokyo",
    "China": "Beijing",
    "South Korea": "Seoul",
    "India": "New Delhi",
    "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Indonesia": "Jakarta",
    "the Philippines": "Manila",
    "Malaysia": "Kuala Lumpur",
    "Singapore": "Singapore",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh",
    "Afghanistan": "Kabul",
    "Nepal": "Kathmandu",
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "Canada": "Ottawa",
    "the United States": "Washington",
    "Mexico": "Mexico City",
    "Cuba": "Havana",
    "Argentina": "Buenos Aires",
    "Chile": "Santiago",
    "Peru": "Lima",
    "Venezuela": "Caracas",
    "Ecuador": "Quito",
    "Uruguay": "Montevideo",
}
TRAIN = [
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "What's the capital city of {c}?",
    "{C}: what is its capital?",
]
TEST = ["Tell me the capital of {c}.", "What city serves as the capital of {c}?"]
OOD = [
    "hey quick q - whats the capital of {c}??",
    "I'm planning a trip to {c} next month. Which city is the capital there?",
    "capital of {c} pls",
    "My friend says the capital of {c} is a different city than I think. What is it actually?",
]


def records(templates: list[str], split: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i, (country, capital) in enumerate(CAPITALS.items()):
        for j, t in enumerate(templates):
            if split != "train" and rng.random() < 0.5:
                continue
            prompt = t.format(c=country, C=country[:1].upper() + country[1:])
            out.append({"id": f"{split}-{i:03d}-{j}", "prompt": prompt, "answer": capital, "category": split})
    return out


def main(out: Path = Path(__file__).resolve().parent / "data") -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, templates, seed in (("train", TRAIN, 0), ("test", TEST, 1), ("ood", OOD, 2)):
        rows = records(templates, split, seed)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{split}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
