"""Answer normalisation of the VQA evaluation (Antol et al.; GT-Vision-Lab ``vqaEval.py``).

Three steps, described in ``docs/vqa-accuracy.md`` ("Answer normalisation"):

1. :func:`clean_whitespace` - newlines and tabs to spaces, strip.
2. :func:`process_punctuation` - the 21 punctuation characters are deleted (when the string
   has one of them next to a space, or a ``digit,digit`` pattern) or replaced by a space; then
   every ``.`` not followed by a digit is deleted. As in the official code the "not preceded by
   a digit" half of that rule never fires, and at most 32 periods are removed (the official
   code passes ``re.UNICODE`` (= 32) as the ``count`` argument of ``re.sub``).
3. :func:`process_digit_article` - lowercase, split on whitespace, number words to digits,
   drop articles, expand apostrophe-less contractions, join with single spaces.

:func:`normalize_answer` runs all three. The tables below are facts of the official rule
(including its quirks: a few keys are capitalised and so can never match a lowercased word,
and ``somebody'd`` maps the "wrong" way round); they are kept as they are so that scores equal
the official ones.
"""

from __future__ import annotations

import re

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Apostrophe-less spellings -> the spelling the human answers use.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

# One word -> its replacement, merging the number map (applied first) and the contraction map
# (applied to what the number map left). No number word is a contraction key or vice versa,
# and no article is either, so the merge is exact.
_WORD_MAP: dict[str, str] = {**CONTRACTIONS, **NUMBER_WORDS}
assert not set(NUMBER_WORDS) & set(CONTRACTIONS)

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# "(?!<=\d)" in the official pattern is a (never-firing) look-ahead, so only "not followed by a digit" is left.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_COUNT = 32  # re.UNICODE passed positionally as ``count`` in the official code
_NEEDS_PUNCT = re.compile("[" + re.escape("".join(PUNCTUATION)) + r"\.]")
_SPACE_ADJACENT = tuple(p + " " for p in PUNCTUATION) + tuple(" " + p for p in PUNCTUATION)


def clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs become spaces, then leading/trailing whitespace is stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Step 2 (see the module docstring); the conditions look at the *input* string."""
    if _NEEDS_PUNCT.search(text) is None:  # fast path: most answers are plain words
        return text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if p not in out:
            continue
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def process_digit_article(text: str) -> str:
    """Step 3: lowercase, number words -> digits, drop articles, expand contractions."""
    words = []
    for word in text.lower().split():
        word = _WORD_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """All three steps, as applied to a prediction by the LAVIS and lenient variants."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))
