"""A small built-in English sentence grammar, so that the corpus needs no text data.

A handful of clause templates (statements, questions, requests, time and number phrases,
coordinated and subordinate clauses) are filled from a few hundred words. The aim is
phonetic variety for the synthesiser, not meaning: every sentence is grammatical, most are
plausible, and lengths are steered to a requested word range.
"""

import numpy as np

NAMES = (
    "Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
    "Karen", "Leo", "Maria", "Nathan", "Olivia", "Peter", "Quentin", "Rachel", "Samuel",
    "Tina", "Victor", "Wendy", "Xavier", "Yvonne", "Zachary", "Martha", "George", "Lucy",
)
NOUNS = (
    "dog", "teacher", "river", "window", "garden", "doctor", "engine", "letter", "market",
    "bridge", "kitchen", "pilot", "farmer", "station", "bottle", "forest", "painter", "road",
    "village", "island", "mountain", "lawyer", "student", "camera", "museum", "harbour",
    "company", "orchestra", "bicycle", "computer", "neighbour", "report", "budget", "castle",
    "lantern", "violin", "sailor", "blanket", "basket", "engineer", "tower", "meadow",
    "carpet", "jacket", "lemon", "pencil", "rabbit", "soldier", "tunnel", "umbrella",
    "wagon", "zebra", "notebook", "factory", "theatre", "library", "hospital", "airport",
    "council", "committee", "quarter", "voyage", "festival", "message", "picture", "mirror",
)
ADJECTIVES = (
    "old", "quiet", "bright", "heavy", "small", "strange", "careful", "golden", "narrow",
    "patient", "rapid", "silver", "gentle", "famous", "hidden", "yellow", "modern", "broken",
    "lucky", "distant", "empty", "friendly", "frozen", "honest", "curious", "ancient",
    "crowded", "elegant", "sudden", "wooden", "purple", "anxious", "cheerful", "enormous",
    "fragile", "loud", "muddy", "polite", "rough", "shiny",
)
# (base, past, third person singular)
VERBS = (
    ("see", "saw", "sees"), ("carry", "carried", "carries"), ("open", "opened", "opens"),
    ("find", "found", "finds"), ("paint", "painted", "paints"), ("follow", "followed", "follows"),
    ("repair", "repaired", "repairs"), ("describe", "described", "describes"),
    ("visit", "visited", "visits"), ("watch", "watched", "watches"), ("build", "built", "builds"),
    ("choose", "chose", "chooses"), ("deliver", "delivered", "delivers"),
    ("measure", "measured", "measures"), ("borrow", "borrowed", "borrows"),
    ("remember", "remembered", "remembers"), ("question", "questioned", "questions"),
    ("discover", "discovered", "discovers"), ("examine", "examined", "examines"),
    ("push", "pushed", "pushes"), ("bring", "brought", "brings"), ("catch", "caught", "catches"),
    ("explain", "explained", "explains"), ("sell", "sold", "sells"), ("wash", "washed", "washes"),
    ("ignore", "ignored", "ignores"), ("admire", "admired", "admires"),
    ("photograph", "photographed", "photographs"), ("inspect", "inspected", "inspects"),
)
INTRANSITIVE = (
    ("arrive", "arrived", "arrives"), ("sleep", "slept", "sleeps"), ("laugh", "laughed", "laughs"),
    ("wait", "waited", "waits"), ("travel", "travelled", "travels"), ("sing", "sang", "sings"),
    ("disappear", "disappeared", "disappears"), ("complain", "complained", "complains"),
    ("return", "returned", "returns"), ("hesitate", "hesitated", "hesitates"),
)
ADVERBS = (
    "quickly", "slowly", "yesterday", "again", "carefully", "suddenly", "quietly", "today",
    "at last", "early", "late last night", "every morning", "without a word", "twice",
    "in the afternoon", "before dawn", "on Sunday", "after lunch", "once more", "perhaps",
)
PREPOSITIONS = (
    "near", "behind", "across", "under", "beside", "inside", "towards", "beyond", "through",
    "along", "above", "around",
)
NUMBERS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "fifteen", "twenty", "thirty", "forty", "fifty", "sixty", "a hundred",
)
WH = ("where", "why", "when", "how")
CONNECTIVES = ("and", "but", "because", "while", "so", "although", "until", "after")


class SentenceGrammar:
    """Random sentences from a few clause templates; deterministic given the generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def _pick(self, words: tuple) -> str | tuple:
        return words[int(self.rng.integers(len(words)))]

    def _noun_phrase(self) -> str:
        r = self.rng.random()
        if r < 0.25:
            return self._pick(NAMES)
        det = self._pick(("the", "the", "a", "this", "that", "every", "my", "our"))
        words = [self._pick(ADJECTIVES)] if r < 0.6 else []
        words.append(self._pick(NOUNS))
        if det == "a" and words[0][0] in "aeiou":
            det = "an"
        return " ".join([det, *words])

    def _clause(self) -> str:
        """A declarative clause: NP V(past|present) [NP] [PP] [ADV]."""
        subject = self._noun_phrase()
        tense = 1 if self.rng.random() < 0.6 else 2
        if self.rng.random() < 0.75:
            verb = self._pick(VERBS)[tense]
            words = [subject, verb, self._noun_phrase()]
        else:
            words = [subject, self._pick(INTRANSITIVE)[tense]]
        if self.rng.random() < 0.5:
            words.append(f"{self._pick(PREPOSITIONS)} {self._noun_phrase()}")
        if self.rng.random() < 0.4:
            words.append(self._pick(ADVERBS))
        return " ".join(words)

    def _question(self) -> str:
        subject, verb = self._noun_phrase(), self._pick(VERBS)[0]
        if self.rng.random() < 0.5:
            return f"did {subject} {verb} {self._noun_phrase()}"
        return f"{self._pick(WH)} did {subject} {verb} {self._noun_phrase()}"

    def _request(self) -> str:
        verb = self._pick(VERBS)[0]
        tail = ""
        if self.rng.random() < 0.5:
            tail = f" {self._pick(PREPOSITIONS)} {self._noun_phrase()}"
        return f"please {verb} {self._noun_phrase()}{tail}"

    def _numbers(self) -> str:
        if self.rng.random() < 0.5:
            return (f"the {self._pick(NOUNS)} leaves at {self._pick(NUMBERS[:12])} "
                    f"{self._pick(NUMBERS[11:])}")
        return f"{self._noun_phrase()} counted {self._pick(NUMBERS)} {self._pick(NOUNS)}s"

    def _one(self) -> tuple[str, str]:
        r = self.rng.random()
        if r < 0.45:
            text, end = self._clause(), "."
        elif r < 0.6:
            text, end = f"{self._clause()} {self._pick(CONNECTIVES)} {self._clause()}", "."
        elif r < 0.75:
            text, end = self._question(), "?"
        elif r < 0.87:
            text, end = self._request(), "."
        else:
            text, end = self._numbers(), "."
        if self.rng.random() < 0.12:
            end = "!" if end == "." else end
        return text[0].upper() + text[1:], end

    def sentence(self, min_words: int, max_words: int) -> str:
        """One or more sentences with a total word count in [min_words, max_words] when the
        templates allow it (after 50 tries the closest candidate is returned)."""
        best, best_gap = "", None
        target = int(self.rng.integers(min_words, max_words + 1))
        for _ in range(50):
            parts = []
            n = 0
            while n < target:
                text, end = self._one()
                parts.append(text + end)
                n += len(text.split())
            candidate = " ".join(parts)
            gap = max(0, min_words - n) + max(0, n - max_words)
            if gap == 0:
                return candidate
            if best_gap is None or gap < best_gap:
                best, best_gap = candidate, gap
        return best
