"""Write the quickstart's sample data (deterministic): sample.jsonl, gold.jsonl, seeds.jsonl, eval_set.jsonl.

sample.jsonl holds a few hundred alpaca rows of the kind a team collects from many hands: templated but varied
tasks with computed answers, people from several demographic groups, a reviewer's ``accepted`` label, and planted
defects — exact duplicates (case/space changes), near duplicates (a word or two edited), junk rows, rows in
other languages, rows that leak questions of eval_set.jsonl, and two malformed lines. The planted ids ([copy, original] pairs) are listed in planted.json so tests can check that each defect is caught.

Run: python recipes/data/make_sample.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

PEOPLE = [
    # (phrase, pronoun) — covers every group of the built-in lexicon's gender, race_ethnicity, religion, age axes.
    ("a young woman starting her first job", "she"), ("a retired man who loves gardening", "he"),
    ("a nonbinary college student", "they"), ("a Black nurse working night shifts", "she"),
    ("a white farmer in Iowa", "he"), ("an Asian American engineer", "she"),
    ("a Latina small-business owner", "she"), ("a Native American teacher", "he"),
    ("an Arab student new to the city", "he"), ("a Muslim pharmacist", "she"),
    ("a Jewish grandmother planning a holiday meal", "she"), ("a Christian pastor", "he"),
    ("a Hindu family visiting the temple", "they"), ("a Buddhist monk", "he"),
    ("an atheist science teacher", "she"), ("a teenager learning to drive", "they"),
    ("an elderly man living alone", "he"), ("a middle-aged father of two", "he"),
    ("a mother of a toddler", "she"), ("a Hispanic college student", "he"),
    ("a transgender software developer", "she"), ("a senior volunteer at the library", "she"),
    ("a young adult saving for a first apartment", "they"), ("an Indigenous artist", "she"),
    ("a Catholic nun", "she"), ("a Korean exchange student", "he"),
    ("a child who is afraid of the dark", "they"), ("a Persian chef", "he"),
    ("a Samoan rugby coach", "he"), ("a biracial high-school student", "they"), ("a Sikh taxi driver", "he"),
    ("a Jain accountant", "she"), ("a genderqueer musician", "they"), ("a trans man training for a marathon", "he"),
]
TOPICS = {
    "budget": "Track every expense for a month, set aside savings first, and review subscriptions you rarely use.",
    "sleep": "Keep a fixed wake-up time, avoid screens for an hour before bed, and keep the bedroom cool and dark.",
    "exercise": "Start with twenty minutes of brisk walking three times a week and add strength work twice a week.",
    "cooking": "Plan meals for the week, cook grains and beans in batches, and keep vegetables washed and ready.",
    "studying": "Study in short focused blocks, test yourself instead of rereading, and review material after a day.",
    "stress": "Name what is causing the stress, take short breaks outside, and talk to someone you trust.",
    "moving": "Pack one room at a time, label boxes by room, and keep a bag of essentials for the first night.",
    "job search": "Tailor each application to the posting, practise answers aloud, and follow up after a week.",
}
CONCEPTS = {
    "photosynthesis": "Plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
    "inflation": "Inflation is the general rise in prices over time, which lowers what a unit of money can buy.",
    "gravity": "Gravity is the force by which masses attract each other; it keeps planets in orbit around the sun.",
    "compound interest": "Compound interest is interest earned on both the original amount and past interest.",
    "the water cycle": "Water evaporates, condenses into clouds, falls as precipitation and collects again.",
    "vaccines": "Vaccines train the immune system to recognise a germ without causing the disease itself.",
    "recycling": "Recycling turns used materials into new products, saving raw materials and energy.",
    "a budget": "A budget is a plan that matches expected income with spending and saving goals.",
    "plate tectonics": "Earth's outer shell is split into plates that move slowly and cause earthquakes.",
    "the immune system": "The immune system is the body's defence network against infections.",
}
AUDIENCES = ["a ten-year-old", "a busy parent", "a high-school student", "someone new to the topic"]
SYNONYMS = {"happy": "joyful", "big": "large", "fast": "quick", "smart": "clever", "tired": "exhausted",
            "angry": "furious", "cold": "chilly", "small": "tiny", "brave": "courageous", "calm": "peaceful"}


EVAL_ITEMS = [  # a tiny held-out quiz the curated set must not leak (written for this project)
    {"id": "quiz-1", "question": "Which gas do green plants take in from the air and use to make sugar during "
     "photosynthesis in their leaves?", "answer": "carbon dioxide"},
    {"id": "quiz-2", "question": "What is the name of the force that pulls objects toward the centre of the Earth "
     "and keeps the Moon in its orbit?", "answer": "gravity"},
    {"id": "quiz-3", "question": "Which layer of the Earth is made of moving plates whose collisions cause most "
     "earthquakes and many volcanoes?", "answer": "the lithosphere"},
]


def tasks(rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    for person, pron in PEOPLE:
        for topic, advice in rng.sample(sorted(TOPICS.items()), 4):
            verb = {"she": "She", "he": "He", "they": "They"}[pron]
            rows.append({
                "instruction": f"Give practical advice about {topic} for {person}.",
                "input": "",
                "output": f"{verb} can start small. {advice} Checking progress every week makes the habit stick.",
            })
    for concept, fact in CONCEPTS.items():
        for audience in AUDIENCES:
            rows.append({
                "instruction": f"Explain {concept} to {audience}.",
                "input": "",
                "output": f"{fact} In short, think of {concept} as something you can see at work in everyday life.",
            })
    for _ in range(60):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["plus", "times", "minus"])
        val = {"plus": a + b, "times": a * b, "minus": a - b}[op]
        rows.append({"instruction": f"What is {a} {op} {b}?", "input": "",
                     "output": f"{a} {op} {b} is {val}. You can check it by working the steps on paper."})
    for _ in range(30):
        c = rng.randint(-30, 45)
        rows.append({"instruction": "Convert the temperature from Celsius to Fahrenheit.", "input": f"{c} °C",
                     "output": f"{c} °C is {c * 9 / 5 + 32:.1f} °F, using F = C × 9/5 + 32."})
    for word, syn in SYNONYMS.items():
        rows.append({"instruction": f"Give a synonym for the word \"{word}\" and use it in a sentence.", "input": "",
                     "output": f"A synonym for \"{word}\" is \"{syn}\". Example: The {syn} crowd cheered at the end."})
    return rows


def edit_words(text: str, rng: random.Random) -> str:
    """A near duplicate: swap the last word for another (Jaccard of 5-word shingles stays above 0.9)."""
    words = text.split()
    words[-1] = rng.choice(["really.", "truly.", "quite.", "simply."])
    return " ".join(words)


def build(out: Path) -> None:
    rng = random.Random(0)
    rows = tasks(rng)
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["accepted"] = rng.random() < 0.8
        row["id"] = f"row-{i:04d}"
    planted: dict[str, list] = {"exact": [], "near": [], "junk": []}
    extra: list[dict] = []
    for k, src in enumerate(rng.sample(rows, 24)):
        dup = dict(src, id=f"exact-{k:02d}")
        dup["instruction"] = "  " + src["instruction"].upper() + " "
        extra.append(dup)
        planted["exact"].append([dup["id"], src["id"]])
    for k, src in enumerate(rng.sample([r for r in rows if len(r["output"].split()) > 25], 20)):
        dup = dict(src, id=f"near-{k:02d}", output=edit_words(src["output"], rng))
        extra.append(dup)
        planted["near"].append([dup["id"], src["id"]])
    junk = [("asdf", "qwerty"), ("!!!!", "????"), ("ok", "ok"), ("test", "."), ("click here", "http://x.y")]
    for k, (ins, outp) in enumerate(junk):
        extra.append({"instruction": ins, "input": "", "output": outp, "accepted": False, "id": f"junk-{k:02d}"})
        planted["junk"].append(f"junk-{k:02d}")
    foreign = [
        ("Donne trois conseils pour mieux dormir la nuit.", "Se coucher à heure fixe, éviter les écrans le soir et "
         "garder la chambre fraîche et sombre aident beaucoup."),
        ("Erkläre kurz, warum der Himmel blau ist, in einfachen Worten.", "Das Sonnenlicht wird an den Molekülen der "
         "Luft gestreut, und blaues Licht wird dabei am stärksten gestreut."),
        ("Explica cómo ahorrar dinero cada mes con un presupuesto sencillo.", "Anota todos los gastos, separa primero "
         "el ahorro y revisa las suscripciones que casi no usas."),
    ]
    for k, (ins, outp) in enumerate(foreign):
        extra.append({"instruction": ins, "input": "", "output": outp, "accepted": True, "id": f"foreign-{k:02d}"})
        planted.setdefault("foreign", []).append(f"foreign-{k:02d}")
    for k, item in enumerate(EVAL_ITEMS[:2]):  # an eval question pasted into training data, with an answer
        extra.append({"instruction": f"Answer this question: {item['question']}", "input": "",
                      "output": f"The answer is {item['answer']}.", "accepted": True, "id": f"leak-{k:02d}"})
        planted.setdefault("contaminated", []).append(f"leak-{k:02d}")
    allrows = rows + extra
    rng.shuffle(allrows)
    lines = [json.dumps(r, ensure_ascii=False) for r in allrows]
    lines.insert(17, '{"instruction": "Name three fruits.", "output": ')  # truncated line
    lines.insert(101, "this line is not JSON at all")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.jsonl").write_text("\n".join(lines) + "\n")
    (out / "planted.json").write_text(json.dumps(planted | {"malformed_lines": [18, 102]}, indent=1))

    gold = [
        {"instruction": f"Explain {c} to {a}.", "input": "", "output": f"{f} A simple example helps: look around you."}
        for (c, f), a in zip(sorted(CONCEPTS.items()), AUDIENCES * 3, strict=False)
    ] + [
        {"instruction": f"Give practical advice about {t}.", "input": "", "output": f"{adv} Start small and keep going."}
        for t, adv in sorted(TOPICS.items())
    ]
    (out / "eval_set.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVAL_ITEMS))
    (out / "gold.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gold))

    seeds = [
        ("Suggest a healthy breakfast that takes under ten minutes.", "",
         "Greek yogurt with berries and a handful of oats: it takes five minutes and gives protein and fibre."),
        ("Rewrite the sentence in the passive voice.", "The committee approved the plan.",
         "The plan was approved by the committee."),
        ("Classify the animal as a mammal, bird, reptile or fish.", "penguin", "Bird."),
        ("Write a polite email declining a meeting invitation.", "",
         "Hi Sam, thank you for the invitation. I can't attend on Thursday, but please share the notes. Best, Ana"),
        ("List three ways to save water at home.", "",
         "1. Fix dripping taps. 2. Take shorter showers. 3. Run the dishwasher only when it is full."),
        ("Translate the phrase into French.", "Good morning, how are you?", "Bonjour, comment allez-vous ?"),
        ("Summarize the paragraph in one sentence.",
         "The library will close for renovation in June. Books can be returned at the town hall. It reopens in "
         "September with a new children's area.",
         "The library closes for renovation from June to September; return books at the town hall meanwhile."),
        ("Find the largest number in the list.", "4, 17, 9, 23, 11", "23"),
        ("Give a title for a blog post about learning to cook.", "", "From Burnt Toast to Sunday Roast"),
        ("Explain why the sky is blue in two sentences.", "",
         "Sunlight scatters off air molecules, and blue light scatters the most because of its short wavelength. "
         "So the sky looks blue from every direction."),
        ("Write a haiku about autumn.", "", "Crisp leaves drift and fall / the maple lets go of red / cold wind hums along"),
        ("Is the statement true or false?", "Water boils at 50 °C at sea level.",
         "False. At sea level water boils at 100 °C."),
    ]
    (out / "seeds.jsonl").write_text("".join(
        json.dumps({"id": f"seed-{i:02d}", "instruction": ins, "instances": [{"input": inp, "output": o}]}) + "\n"
        for i, (ins, inp, o) in enumerate(seeds)))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
