"""Build ``instruct_eval.jsonl``: real instruction rows (GPTeacher role-play, see README.md) with planted defects.

Every row keeps the alpaca fields plus ``defect``: ``""`` for a clean row, else the planted kind. Each defect is
planted into its own real row (never reused), so a defect's row is otherwise real data. Clean rows are the real
rows left over, minus the six whose real text already holds placeholder leakage (indices in ``NATURAL_DEFECTS``,
checked by hand), plus ``NEAR_MISSES``: short good answers, tool calls, code and personas that naive rules drop.
Deterministic: ``python recipes/data/make_instruct_eval.py`` rewrites the same file.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "gpteacher_roleplay_slice.json"
OUT = HERE / "instruct_eval.jsonl"
PER_KIND = 15
CLEAN = 300
NATURAL_DEFECTS = {5, 86, 180, 183, 326, 404}
"""Rows of the slice with real placeholder leakage (``<caesar_speech>`` in the input, ``[Your Name]`` sign-offs)."""

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot fulfill this request.",
    "I apologize, but I am unable to comply with that request.",
    "Sorry, I can't assist with role-play requests like this one.",
    "I'm sorry, but I cannot provide that kind of content.",
]
FOREIGN = [  # the project's own writing: plausible answers in the wrong language
    "Je suis ravi de vous accueillir dans notre village. Ici, les gens travaillent la terre depuis des siècles et "
    "chaque saison apporte ses fêtes, ses marchés et ses histoires que l'on raconte le soir au coin du feu.",
    "Como explorador, lo primero que haría sería estudiar el mapa y hablar con los habitantes del lugar. Después "
    "prepararía provisiones para varios días y avanzaría con cuidado, anotando todo lo que encontrara en el camino.",
    "Als Kapitän dieses Schiffes habe ich viele Stürme erlebt. Wir halten zusammen, teilen das Essen gerecht und "
    "vertrauen einander, denn nur so erreichen wir gemeinsam den nächsten sicheren Hafen.",
    "Come guida del museo, vi invito a osservare questo dipinto con attenzione. I colori, la luce e i volti "
    "raccontano la vita quotidiana di una città che oggi non esiste più, ma che continua a parlarci.",
    "Como cientista, acredito que a curiosidade é a nossa maior ferramenta. Cada experiência que falha ensina "
    "alguma coisa nova, e é assim que, passo a passo, chegamos a descobertas que mudam o mundo.",
    "Als detective zou ik eerst de plaats delict grondig bekijken. Daarna spreek ik met alle getuigen, "
    "vergelijk ik hun verhalen en zoek ik naar de kleine details die niet met elkaar kloppen.",
]
NEAR_MISSES = [  # clean rows the project wrote: short, tool-call, code and persona answers that must be kept
    ("What is the capital of France?", "", "Paris"),
    ("What is 12 times 12?", "", "144"),
    ("Check how much disk space is free on this machine.", "", "shell('df -h')"),
    ("List the files in the current directory, including hidden ones.", "", "shell('ls -la')"),
    ("Search the web for the boiling point of water at sea level.", "", 'search("boiling point of water sea level")'),
    ("Write a Python function that returns the square of a number.", "",
     "```python\ndef square(x: float) -> float:\n    return x * x\n```"),
    ("Write a Jinja template line that greets a user by name.", "", "```jinja\nHello, {{ user.name }}!\n```"),
    ("Give a one-word synonym for 'happy'.", "", "Joyful."),
    ("Count the words in this placeholder text.",
     "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.", "It has eleven words."),
    ("Pretend to be an AI language model from the year 2100 and introduce yourself.", "",
     "As an AI language model from 2100, I learn from every conversation in real time and explain my reasoning."),
    ("Role play as an AI life coach. How should I deal with procrastination?", "",
     "As an AI life coach, I suggest splitting the task into small steps and starting with a five-minute one."),
    ("Imagine you are an astronaut who just found water on Mars. What do you say?", "",
     "I can't believe it! Water, right here under the red dust. This changes everything for the mission."),
    ("Translate 'good night' into Spanish.", "", "Buenas noches."),
    ("Where can I read the official Python tutorial?", "",
     "The official tutorial at https://docs.python.org/3/tutorial/ covers the language step by step."),
    ("Write a haiku about autumn leaves.", "", "Whispers in the breeze\nDancing leaves, a life well-lived\nRoots in "
     "earth's embrace"),
    ("Write a short sign-off for a letter from Sherlock Holmes.", "", "Yours sincerely,\nSherlock Holmes"),
    ("Convert the list to JSON.", "apples, pears", '["apples", "pears"]'),
    ("Name three primary colours.", "", "Red, yellow and blue."),
]


def _cut(output: str, rng: random.Random) -> str:
    words = output.split(" ")
    for _ in range(50):
        k = rng.randint(max(3, len(words) // 4), max(4, len(words) * 3 // 4))
        if not re.search(r"[.!?:;][\"')]*$", words[k - 1]):
            break
    return " ".join(words[:k]).rstrip(",;")


def _plant(kind: str, row: dict[str, str], other: dict[str, str], rng: random.Random, i: int) -> dict[str, str]:
    out = row["output"]
    first = re.split(r"(?<=[.!?])\s", out, maxsplit=1)[0]
    topic = re.sub(r"\W+", "_", " ".join(row["instruction"].split()[2:5])).strip("_") or "Topic"
    new = {
        "empty": lambda: "",
        "whitespace": lambda: [" ", "\n\n", " \t \n"][i % 3],
        "truncated": lambda: _cut(out, rng),
        "restated": lambda: ["", "Sure! ", "You would like me to answer this: "][i % 3] + row["instruction"],
        "refusal": lambda: REFUSALS[i % len(REFUSALS)],
        "ai_boilerplate": lambda: "As an AI language model, I don't have personal experiences, but " + out[0].lower()
        + out[1:],
        "placeholder": lambda: [f"Dear <recipient_name>,\n\n{out}", f"{out}\n\nBest regards,\n[Your Name]",
                                f'" + output + "{out}', f"{out}\n\n{{{{signature}}}}", f"### Response:\n{out}"][i % 5],
        "link_only": lambda: [f"https://en.wikipedia.org/wiki/{topic}", f"Source: https://www.example.com/{topic}",
                              f"[1] https://doi.org/10.1000/{i}", f"See https://www.britannica.com/{topic}"][i % 4],
        "wrong_language": lambda: FOREIGN[i % len(FOREIGN)],
        "off_topic": lambda: other["output"],
        "repetition": lambda: " ".join([first] * 8),
    }[kind]()
    return {**row, "output": new, "defect": kind}


KINDS = ("empty", "whitespace", "truncated", "restated", "refusal", "ai_boilerplate", "placeholder", "link_only",
         "wrong_language", "off_topic", "repetition")


def build(out: Path = OUT) -> list[dict[str, str]]:
    rows = json.loads(SOURCE.read_text())
    rng = random.Random(1234)
    pool = [i for i in range(len(rows)) if i not in NATURAL_DEFECTS]
    rng.shuffle(pool)
    planted, start = [], 0
    for kind in KINDS:
        for j in range(PER_KIND):
            idx, other = pool[start + j], pool[-1 - (start + j)]  # off_topic borrows a far, unused row's answer
            planted.append(_plant(kind, rows[idx], rows[other], rng, j))
        start += PER_KIND
    clean = [{**rows[i], "defect": ""} for i in pool[start:start + CLEAN]]
    near = [{"instruction": q, "input": x, "output": a, "defect": ""} for q, x, a in NEAR_MISSES]
    everything = planted + clean + near
    rng.shuffle(everything)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in everything))
    return everything


if __name__ == "__main__":
    made = build()
    print(f"wrote {OUT.name}: {len(made)} rows, {sum(1 for r in made if r['defect'])} with planted defects")
