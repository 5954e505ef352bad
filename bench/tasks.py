"""The real library's tasks: short programmatic tasks with one exact answer, in families of related tasks.

Every task draws its inputs from a space split once, by a fixed seed, into training inputs and held-out
inputs that never meet; prompts are what a user would type into a chat. `FAMILIES` is the library the
benchmarks train (bench/real_library.py); `HELD_OUT_TASKS` are tasks no library adapter is trained on,
near one or two families, for few-shot composition.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WORDS = (
    "apple table river garden window pencil market silver orange basket candle doctor forest button "
    "rabbit summer winter planet bridge castle dragon engine flower guitar hammer island jacket kitten "
    "ladder mirror needle pepper rocket saddle tomato violin wallet yellow zebra anchor bottle carpet "
    "desert finger ginger helmet insect jungle kettle lemon magnet napkin oyster parrot quartz ribbon "
    "spider ticket turtle velvet walnut winner yogurt almond beacon cactus dinner falcon goblet harbor "
    "iguana jigsaw koala lantern meadow nickel orchid pillow quiver radish sailor tunnel umpire vessel "
    "whisker yarn zipper badger cobalt dentist elbow feather gravel hollow igloo jersey kernel lobster "
    "mango noodle olive puzzle quilt saucer thunder unicorn valley wizard author banner cotton dolphin "
    "empire fabric glider hockey indigo juggler kayak lizard marble nectar oxygen pirate raven salmon "
    "tablet uniform vortex willow blossom cereal domino fossil glacier hazel iris jelly kiwi lotus"
).split()
FRUITS = (
    "apple banana cherry grape lemon mango orange peach pear plum kiwi melon papaya apricot fig guava lime "
    "coconut pineapple raspberry strawberry blueberry blackberry cranberry nectarine pomegranate tangerine "
    "watermelon date quince lychee persimmon"
).split()
ANIMALS = (
    "dog cat horse cow sheep goat tiger lion zebra giraffe monkey rabbit mouse wolf fox bear deer eagle "
    "owl parrot shark whale dolphin camel donkey turtle snake frog otter beaver badger squirrel penguin"
).split()
NOUNS = "movie meal hotel phone book concert service trip game show film dinner room car laptop".split()
GOOD = (
    "wonderful excellent great fantastic lovely delightful amazing superb brilliant enjoyable pleasant "
    "perfect charming outstanding marvelous"
).split()
BAD = (
    "awful terrible horrible dreadful boring disappointing poor bad lousy miserable annoying painful "
    "disgusting mediocre unpleasant"
).split()


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    description: str  # what its adapter's card says
    inputs: Callable[[], list]  # the whole input space (deterministic)
    prompt: Callable[[object], str]
    answer: Callable[[object], str]

    def split(self, train: int = 300, held_out: int = 20, seed: int = 0) -> tuple[list, list]:
        """Disjoint training and held-out inputs (held-out first, so it never changes with `train`)."""
        space = sorted(set(self.inputs()), key=repr)
        random.Random(f"{seed}:{self.name}").shuffle(space)
        test, rest = space[:held_out], space[held_out:]
        rng = random.Random(f"{seed}:{self.name}:train")
        return [rng.choice(rest) for _ in range(train)] if len(rest) < train else rest[:train], test

    def examples(self, inputs: list) -> list[tuple[str, str]]:
        return [(self.prompt(x), self.answer(x)) for x in inputs]


def pairs(lo: int, hi: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(lo, hi) for b in range(lo, hi)]


def number_lists() -> list[tuple[int, ...]]:
    rng = random.Random("lists")
    return [tuple(rng.sample(range(1, 100), rng.randint(3, 6))) for _ in range(3000)]


def fmt(xs: tuple[int, ...]) -> str:
    return ", ".join(map(str, xs))


FAMILIES: dict[str, list[Task]] = {
    "arithmetic": [
        Task(
            "add",
            "arithmetic",
            "Adds two whole numbers and answers with the sum only.",
            lambda: pairs(10, 100),
            lambda x: f"What is {x[0]} plus {x[1]}? Reply with the number only.",
            lambda x: str(x[0] + x[1]),
        ),
        Task(
            "subtract",
            "arithmetic",
            "Subtracts one whole number from another and answers with the difference only.",
            lambda: [(a, b) for a, b in pairs(10, 100) if a > b],
            lambda x: f"What is {x[0]} minus {x[1]}? Reply with the number only.",
            lambda x: str(x[0] - x[1]),
        ),
        Task(
            "multiply",
            "arithmetic",
            "Multiplies two small whole numbers and answers with the product only.",
            lambda: pairs(2, 20),
            lambda x: f"What is {x[0]} times {x[1]}? Reply with the number only.",
            lambda x: str(x[0] * x[1]),
        ),
    ],
    "lists": [
        Task(
            "list-max",
            "lists",
            "Finds the largest number in a list of numbers.",
            number_lists,
            lambda x: f"Here is a list of numbers: {fmt(x)}. Which number is the largest?",
            lambda x: str(max(x)),
        ),
        Task(
            "list-min",
            "lists",
            "Finds the smallest number in a list of numbers.",
            number_lists,
            lambda x: f"Here is a list of numbers: {fmt(x)}. Which number is the smallest?",
            lambda x: str(min(x)),
        ),
        Task(
            "list-last",
            "lists",
            "Tells the last number of a list of numbers.",
            number_lists,
            lambda x: f"Here is a list of numbers: {fmt(x)}. Which number comes last?",
            lambda x: str(x[-1]),
        ),
    ],
    "calendar": [
        Task(
            "weekday-after",
            "calendar",
            "Tells which day of the week it is a number of days after a given day.",
            lambda: [(d, n) for d in range(7) for n in range(1, 30)],
            lambda x: f"Today is {WEEKDAYS[x[0]]}. What day of the week will it be in {x[1]} days?",
            lambda x: WEEKDAYS[(x[0] + x[1]) % 7],
        ),
        Task(
            "month-after",
            "calendar",
            "Tells which month it is a number of months after a given month.",
            lambda: [(m, n) for m in range(12) for n in range(1, 24)],
            lambda x: f"It is {MONTHS[x[0]]} now. Which month will it be {x[1]} months from now?",
            lambda x: MONTHS[(x[0] + x[1]) % 12],
        ),
        Task(
            "clock-after",
            "calendar",
            "Tells the hour on a 12-hour clock a number of hours after a given hour.",
            lambda: [(h, n) for h in range(1, 13) for n in range(1, 30)],
            lambda x: f"The clock shows {x[0]} o'clock. What hour will it show {x[1]} hours later?",
            lambda x: str((x[0] + x[1] - 1) % 12 + 1),
        ),
    ],
    "spelling": [
        Task(
            "uppercase",
            "spelling",
            "Rewrites a word in capital letters.",
            lambda: WORDS,
            lambda w: f"Write the word '{w}' in capital letters.",
            lambda w: w.upper(),
        ),
        Task(
            "first-letter",
            "spelling",
            "Tells the first letter of a word.",
            lambda: WORDS,
            lambda w: f"What is the first letter of the word '{w}'?",
            lambda w: w[0],
        ),
        Task(
            "last-letter",
            "spelling",
            "Tells the last letter of a word.",
            lambda: WORDS,
            lambda w: f"What is the last letter of the word '{w}'?",
            lambda w: w[-1],
        ),
    ],
    "labels": [
        Task(
            "sentiment",
            "labels",
            "Classifies a short review as positive or negative.",
            lambda: [(n, a, a in GOOD) for n in NOUNS for a in GOOD + BAD],
            lambda x: f"Review: 'The {x[0]} was {x[1]}.' Is this review positive or negative?",
            lambda x: "positive" if x[2] else "negative",
        ),
        Task(
            "parity",
            "labels",
            "Tells whether a whole number is even or odd.",
            lambda: list(range(10, 1000)),
            lambda n: f"Is the number {n} even or odd?",
            lambda n: "even" if n % 2 == 0 else "odd",
        ),
        Task(
            "fruit-or-animal",
            "labels",
            "Tells whether a word names a fruit or an animal.",
            lambda: [(w, "fruit") for w in FRUITS] + [(w, "animal") for w in ANIMALS],
            lambda x: f"Is a {x[0]} a fruit or an animal?",
            lambda x: x[1],
        ),
    ],
}
TASKS: dict[str, Task] = {t.name: t for tasks in FAMILIES.values() for t in tasks}


# Tasks no library adapter is trained on, each near one family (few-shot composition, bench_compose.py).
HELD_OUT_TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "list-first",
            "lists",
            "Tells the first number of a list of numbers.",
            number_lists,
            lambda x: f"Here is a list of numbers: {fmt(x)}. Which number comes first?",
            lambda x: str(x[0]),
        ),
        Task(
            "weekday-before",
            "calendar",
            "Tells which day of the week it was a number of days before a given day.",
            lambda: [(d, n) for d in range(7) for n in range(1, 30)],
            lambda x: f"Today is {WEEKDAYS[x[0]]}. What day of the week was it {x[1]} days ago?",
            lambda x: WEEKDAYS[(x[0] - x[1]) % 7],
        ),
        Task(
            "lowercase",
            "spelling",
            "Rewrites a word in small letters.",
            lambda: WORDS,
            lambda w: f"Write the word '{w.upper()}' in small letters.",
            lambda w: w,
        ),
        Task(
            "add-three",
            "arithmetic",
            "Adds three whole numbers and answers with the sum only.",
            lambda: [(a, b, c) for a in range(10, 40) for b in range(10, 40) for c in range(10, 40, 3)],
            lambda x: f"What is {x[0]} plus {x[1]} plus {x[2]}? Reply with the number only.",
            lambda x: str(sum(x)),
        ),
    ]
}
