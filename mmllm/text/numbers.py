"""Numbers spelled out the way SynthDASB speaks them and the normaliser expects them:
`number_words(205)` -> "two hundred and five", ordinals, years.
"""

from __future__ import annotations

import re


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ONES = _words("""
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen
""")


TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")


ORDINALS = _words("""
    first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth
    fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth
""")


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 as British-style words: 205 -> "two hundred and five"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        head, rest = ONES[n // 100] + " hundred", n % 100
        return head if rest == 0 else f"{head} and {number_words(rest)}"
    head, rest = number_words(n // 1000) + " thousand", n % 1000
    if rest == 0:
        return head
    return f"{head} and {number_words(rest)}" if rest < 100 else f"{head} {number_words(rest)}"


def ordinal_words(n: int) -> str:
    """1 <= n <= 31 (days of a month): 23 -> "twenty third"."""
    if not 1 <= n <= 31:
        raise ValueError(f"ordinal out of range: {n}")
    if n <= 20:
        return ORDINALS[n - 1]
    if n == 30:
        return "thirtieth"
    return f"{TENS[n // 10]} {ORDINALS[n % 10 - 1]}"


def year_words(year: int) -> str:
    """1100 <= year <= 2099 read in pairs: 1984 -> "nineteen eighty four", 2005 -> "two
    thousand and five", 2021 -> "twenty twenty one"."""
    if not 1100 <= year <= 2099:
        raise ValueError(f"year out of range: {year}")
    hi, lo = divmod(year, 100)
    if 2000 <= year < 2010:
        return number_words(year)
    if lo == 0:
        return number_words(hi) + " hundred"
    return f"{number_words(hi)} {'oh ' if lo < 10 else ''}{number_words(lo)}"


_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(?!\w)")


def _number_as_words(match: re.Match) -> str:
    whole, decimals, ordinal = match.group(1), match.group(2), match.group(3)
    n = int(whole.replace(",", ""))
    if ordinal and 1 <= n <= 31 and not decimals:
        return ordinal_words(n)
    if n >= 1_000_000:
        return " ".join(ONES[int(d)] for d in whole if d.isdigit())  # digit by digit
    # four digits without a comma read as a year, as SynthDASB (and people) say them
    spoken = (
        year_words(n)
        if 1100 <= n <= 2099 and whole.isdigit() and not decimals
        else (number_words(n))
    )
    if decimals:
        spoken += " point " + " ".join(ONES[int(d)] for d in decimals)
    return f" {spoken} "


def spell_numbers(text: str) -> str:
    """Digits in `text` as the words SynthDASB speaks: "25" -> "twenty five", "3rd" ->
    "third", "1984" -> "nineteen eighty four", "2.5" -> "two point five", "1,200" -> "one
    thousand two hundred"; a number of a million or more is read digit by digit."""
    return _NUMBER.sub(_number_as_words, text)
