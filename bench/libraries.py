"""Three more libraries for the zero-shot benchmark (bench/bench_zeroshot.py), none sharing a task with
another or with bench/tasks.py's FAMILIES: nine adapters each, three families of three tasks.

    python -m bench.libraries            # train what is missing (cached), print base vs own accuracy

The adapters are mixed in form as a public hub's are: ranks 4 to 16, attention-only and all-linear
targets, every layer or only the top eight, 40 to 100 steps, plain LoRA, DoRA and rsLoRA. Forms are laid
out as a Latin square over (family, task), so no family shares one form: a method that grouped adapters
by form rather than by task would score badly against the families.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from bench.common import table
from bench.real_library import Recipe, accuracy, cached_adapter, load_model, train
from bench.tasks import MONTHS, WEEKDAYS, WORDS, Task, fmt

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTENTION + ["gate_proj", "up_proj", "down_proj"]
TOP_EIGHT = list(range(22, 30))  # SmolLM2-135M has 30 layers
COLOURS = "red blue green yellow purple orange pink brown black white grey violet".split()
SHAPES = "circle square triangle rectangle oval star diamond hexagon pentagon cube sphere cone".split()
OPPOSITES = {
    "big": "small", "hot": "cold", "fast": "slow", "up": "down", "open": "closed", "happy": "sad",
    "light": "dark", "early": "late", "full": "empty", "hard": "soft", "high": "low", "long": "short",
    "old": "young", "rich": "poor", "strong": "weak", "thick": "thin", "wet": "dry", "loud": "quiet",
    "clean": "dirty", "near": "far", "first": "last", "in": "out", "left": "right", "day": "night",
    "win": "lose", "push": "pull", "buy": "sell", "give": "take", "true": "false", "above": "below",
}  # fmt: skip
SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "sheep": "baa", "duck": "quack", "pig": "oink",
    "lion": "roar", "snake": "hiss", "owl": "hoot", "horse": "neigh", "frog": "ribbit", "bee": "buzz",
    "mouse": "squeak", "wolf": "howl", "crow": "caw", "goat": "bleat", "donkey": "bray", "chick": "cheep",
}  # fmt: skip
SEASON = ["winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn", "autumn",
          "autumn", "winter"]  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyz"
NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()


def small_lists() -> list[tuple[int, ...]]:
    import random

    rng = random.Random("small-lists")
    return [tuple(rng.sample(range(1, 20), rng.randint(3, 5))) for _ in range(2000)]


LIBRARIES: dict[str, dict[str, list[Task]]] = {
    "B": {
        "doubling": [
            Task(
                "double",
                "doubling",
                "Doubles a whole number.",
                lambda: list(range(5, 500)),
                lambda n: f"What is twice {n}? Reply with the number only.",
                lambda n: str(2 * n),
            ),
            Task(
                "half",
                "doubling",
                "Halves an even whole number.",
                lambda: list(range(10, 1000, 2)),
                lambda n: f"What is half of {n}? Reply with the number only.",
                lambda n: str(n // 2),
            ),
            Task(
                "square",
                "doubling",
                "Squares a small whole number.",
                lambda: list(range(2, 70)),
                lambda n: f"What is {n} squared? Reply with the number only.",
                lambda n: str(n * n),
            ),
        ],
        "word-shape": [
            Task(
                "reverse",
                "word-shape",
                "Spells a word backwards.",
                lambda: WORDS,
                lambda w: f"Spell the word '{w}' backwards.",
                lambda w: w[::-1],
            ),
            Task(
                "word-length",
                "word-shape",
                "Counts the letters of a word.",
                lambda: WORDS,
                lambda w: f"How many letters are in the word '{w}'? Reply with the number only.",
                lambda w: str(len(w)),
            ),
            Task(
                "second-letter",
                "word-shape",
                "Tells the second letter of a word.",
                lambda: WORDS,
                lambda w: f"What is the second letter of the word '{w}'?",
                lambda w: w[1],
            ),
        ],
        "kinds": [
            Task(
                "colour-or-shape",
                "kinds",
                "Tells whether a word names a colour or a shape.",
                lambda: [(w, k, i) for k, ws in (("colour", COLOURS), ("shape", SHAPES)) for w in ws for i in range(3)],  # noqa: E501
                lambda x: ["Is {} a colour or a shape?", "Is '{}' a colour or a shape?", "Colour or shape: {}?"][
                    x[2]
                ].format(x[0]),
                lambda x: x[1],
            ),
            Task(
                "vowel-or-consonant",
                "kinds",
                "Tells whether a letter is a vowel or a consonant.",
                lambda: [(c, i) for c in LETTERS for i in range(3)],
                lambda x: [
                    "Is the letter '{}' a vowel or a consonant?",
                    "Is '{}' a vowel or a consonant?",
                    "Vowel or consonant: the letter {}?",
                ][x[1]].format(x[0]),
                lambda x: "vowel" if x[0] in "aeiou" else "consonant",
            ),
            Task(
                "bigger",
                "kinds",
                "Tells the larger of two numbers.",
                lambda: [(a, b) for a in range(1, 60) for b in range(1, 60) if a != b],
                lambda x: f"Which is larger, {x[0]} or {x[1]}?",
                lambda x: str(max(x)),
            ),
        ],
    },
    "C": {
        "counting": [
            Task(
                "next-number",
                "counting",
                "Tells the number that comes after a number.",
                lambda: list(range(10, 2000)),
                lambda n: f"Which number comes right after {n}?",
                lambda n: str(n + 1),
            ),
            Task(
                "previous-number",
                "counting",
                "Tells the number that comes before a number.",
                lambda: list(range(10, 2000)),
                lambda n: f"Which number comes right before {n}?",
                lambda n: str(n - 1),
            ),
            Task(
                "next-letter",
                "counting",
                "Tells the letter that comes after a letter in the alphabet.",
                lambda: [(c, i) for c in LETTERS[:-1] for i in range(3)],
                lambda x: [
                    "Which letter comes after '{}' in the alphabet?",
                    "What letter follows '{}'?",
                    "In the alphabet, which letter is right after {}?",
                ][x[1]].format(x[0]),
                lambda x: LETTERS[LETTERS.index(x[0]) + 1],
            ),
        ],
        "seasons": [
            Task(
                "day-before",
                "seasons",
                "Tells the day of the week before a given day.",
                lambda: [(d, i) for d in range(7) for i in range(9)],
                lambda x: [
                    "Which day of the week comes before {}?",
                    "What day is the day before {}?",
                    "Name the day that comes just before {}.",
                    "If tomorrow is {}, what day is today?",
                    "Which weekday precedes {}?",
                    "The day before {} is which day?",
                    "{}: which day comes before it?",
                    "Tell me the day before {}.",
                    "What weekday is right before {}?",
                ][x[1]].format(WEEKDAYS[x[0]]),
                lambda x: WEEKDAYS[(x[0] - 1) % 7],
            ),
            Task(
                "month-number",
                "seasons",
                "Tells a month's number in the year.",
                lambda: [(m, i) for m in range(12) for i in range(5)],
                lambda x: [
                    "What is the number of the month {}?",
                    "Which month number is {}?",
                    "{} is month number what? Reply with the number only.",
                    "As a number, which month of the year is {}?",
                    "Give the month number of {}.",
                ][x[1]].format(MONTHS[x[0]]),
                lambda x: str(x[0] + 1),
            ),
            Task(
                "season",
                "seasons",
                "Tells the season of a month in the northern hemisphere.",
                lambda: [(m, i) for m in range(12) for i in range(5)],
                lambda x: [
                    "In which season is {}?",
                    "What season is it in {}?",
                    "{} falls in which season?",
                    "Which season does {} belong to?",
                    "Name the season of {}.",
                ][x[1]].format(MONTHS[x[0]]),
                lambda x: SEASON[x[0]],
            ),
        ],
        "wording": [
            Task(
                "capitalise",
                "wording",
                "Writes a word with its first letter capital.",
                lambda: WORDS,
                lambda w: f"Write '{w}' with a capital first letter.",
                lambda w: w.capitalize(),
            ),
            Task(
                "plural",
                "wording",
                "Writes the plural of a regular noun.",
                lambda: [w for w in WORDS if not w.endswith(("s", "x", "y", "h", "z", "o"))],
                lambda w: f"What is the plural of '{w}'?",
                lambda w: w + "s",
            ),
            Task(
                "repeat",
                "wording",
                "Writes a word twice.",
                lambda: WORDS,
                lambda w: f"Write the word '{w}' twice, separated by a space.",
                lambda w: f"{w} {w}",
            ),
        ],
    },
    "D": {
        "digits": [
            Task(
                "digit-sum",
                "digits",
                "Adds up the digits of a number.",
                lambda: list(range(10, 1000)),
                lambda n: f"What is the sum of the digits of {n}?",
                lambda n: str(sum(map(int, str(n)))),
            ),
            Task(
                "digit-count",
                "digits",
                "Counts the digits of a number.",
                lambda: list(range(1, 100000, 37)),
                lambda n: f"How many digits does {n} have?",
                lambda n: str(len(str(n))),
            ),
            Task(
                "last-digit",
                "digits",
                "Tells the last digit of a number.",
                lambda: list(range(100, 5000, 7)),
                lambda n: f"What is the last digit of {n}?",
                lambda n: str(n % 10),
            ),
        ],
        "tallies": [
            Task(
                "list-count",
                "tallies",
                "Counts the numbers in a list.",
                small_lists,
                lambda x: f"How many numbers are in this list: {fmt(x)}?",
                lambda x: str(len(x)),
            ),
            Task(
                "list-sum",
                "tallies",
                "Adds up a short list of small numbers.",
                small_lists,
                lambda x: f"What is the sum of this list: {fmt(x)}?",
                lambda x: str(sum(x)),
            ),
            Task(
                "list-second",
                "tallies",
                "Tells the second number of a list.",
                small_lists,
                lambda x: f"What is the second number in this list: {fmt(x)}?",
                lambda x: str(x[1]),
            ),
        ],
        "lookup": [
            Task(
                "opposite",
                "lookup",
                "Gives the opposite of a word.",
                lambda: [(w, i) for w in OPPOSITES for i in range(3)],
                lambda x: [
                    "What is the opposite of '{}'?",
                    "Give the opposite of the word {}.",
                    "What word means the opposite of '{}'?",
                ][x[1]].format(x[0]),
                lambda x: OPPOSITES[x[0]],
            ),
            Task(
                "animal-sound",
                "lookup",
                "Tells the sound an animal makes.",
                lambda: [(w, i) for w in SOUNDS for i in range(4)],
                lambda x: [
                    "What sound does a {} make?",
                    "What noise does a {} make?",
                    "A {} says what?",
                    "Which sound is made by a {}?",
                ][x[1]].format(x[0]),
                lambda x: SOUNDS[x[0]],
            ),
            Task(
                "number-word",
                "lookup",
                "Writes a number from 1 to 20 as a word.",
                lambda: [(n, i) for n in range(1, 21) for i in range(3)],
                lambda x: [
                    "Write the number {} as a word.",
                    "How do you spell {} in words?",
                    "Spell out the number {}.",
                ][x[1]].format(x[0]),
                lambda x: NUMBER_WORDS[x[0] - 1],
            ),
        ],
    },
}
# (rank, targets, layers, steps, extra LoraConfig fields); forms[(family index + task index) % 3] per
# library row, shifted per library, so each family holds three different forms.
FORMS = [
    [
        {"r": 4, "lora_alpha": 8, "target_modules": ATTENTION, "layers_to_transform": TOP_EIGHT, "steps": 80},
        {"r": 8, "lora_alpha": 16, "target_modules": ALL_LINEAR, "use_dora": True, "steps": 40},
        {"r": 16, "lora_alpha": 16, "target_modules": ALL_LINEAR, "use_rslora": True, "steps": 60},
    ],
    [
        {"r": 16, "lora_alpha": 32, "target_modules": ATTENTION, "steps": 60},
        {
            "r": 4,
            "lora_alpha": 4,
            "target_modules": ALL_LINEAR,
            "layers_to_transform": TOP_EIGHT,
            "steps": 100,
            "use_rslora": True,
        },
        {"r": 8, "lora_alpha": 16, "target_modules": ATTENTION, "use_dora": True, "steps": 60},
    ],
    [
        {"r": 8, "lora_alpha": 16, "target_modules": ALL_LINEAR, "steps": 40},
        {"r": 16, "lora_alpha": 32, "target_modules": ATTENTION, "layers_to_transform": TOP_EIGHT, "steps": 80},
        {"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, "steps": 60},
    ],
]


def recipe_and_form(library: str, family: int, position: int) -> tuple[Recipe, dict]:
    """The training recipe and the extra LoraConfig fields of one adapter of a library."""
    shift = sorted(LIBRARIES).index(library)
    form = dict(FORMS[family][(position + shift) % 3])
    recipe = replace(Recipe(), rank=form.pop("r"), alpha=form.pop("lora_alpha"), steps=form.pop("steps"))
    return recipe, form


def adapters(library: str) -> list[tuple[Task, Recipe, dict]]:
    """(task, recipe, form) of every adapter of a library, in family order."""
    return [
        (t, *recipe_and_form(library, f, i))
        for f, tasks in enumerate(LIBRARIES[library].values())
        for i, t in enumerate(tasks)
    ]


HELD_OUT = 20  # inputs a task that every benchmark of these libraries measures on


def split(t: Task, recipe: Recipe) -> tuple[list, list]:
    """(training inputs, held-out inputs) of a library's task: the ones its adapter trained on, and
    HELD_OUT others."""
    return t.split(recipe.train_examples, HELD_OUT, seed=recipe.seed)


def train_library(library: str) -> dict[str, Path]:
    """Every adapter of the library (task name -> PEFT folder), training what is missing."""
    folders = {}
    for t, recipe, form in adapters(library):
        if not (found := cached_adapter(t, recipe, form)):
            model, tokenizer = load_model()  # fresh each time: DoRA and layer subsets leave nothing behind
            found = train(t, recipe, model, tokenizer, form=form)
        folders[t.name] = found
    return folders


def describe(recipe: Recipe, form: dict) -> str:
    where = "attention" if form["target_modules"] == ATTENTION else "all linear"
    layers = ", top 8 layers" if form.get("layers_to_transform") else ""
    kind = "DoRA" if form.get("use_dora") else "rsLoRA" if form.get("use_rslora") else "LoRA"
    return f"{kind} r{recipe.rank}, {where}{layers}, {recipe.steps} steps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma separated (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    args = parser.parse_args()
    os.nice(10)
    for library in args.libraries.split(","):
        folders = train_library(library)
        if args.no_eval:
            continue
        from quiver_hub import merged

        model, tokenizer = load_model()
        rows = []
        for t, recipe, form in adapters(library):
            _, held_out = split(t, recipe)
            base = accuracy(model, tokenizer, t, held_out)
            with merged(model, folders[t.name]):
                own = accuracy(model, tokenizer, t, held_out)
            rows.append([t.family, t.name, describe(recipe, form), f"{base:.2f}", f"{own:.2f}",
                         "yes" if own > base else "NO"])  # fmt: skip
        print(f"library {library}: exact match on 20 held-out inputs per task")
        print(table(["family", "task", "form", "base", "own adapter", "beats base"], rows))


if __name__ == "__main__":
    main()
