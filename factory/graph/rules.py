"""The no-LLM extractor: named spans and noun phrases by rules, co-occurrence edges.

Needs nothing downloaded at run time. Per chunk it finds
  * capitalized spans ("Tomas Eriksen", "Old Mill Gardens", "Flour & Ember"),
    with honorifics ("Dr.", "Aunt") handled; numbers and possessives end a span;
  * noun phrases: runs of 2-3 lower-case content words ("sourdough starter");
and records the cues it saw for each span's type: honorifics, kinship words,
speech verbs, "X and I", ", who", a he/she referring back to a sentence's
subject (person); place suffixes and prepositions (geo); company suffixes and
'&' (organization); event suffixes. A span with no cue gets no type here: the
merge decides from corpus-wide evidence (merge.py), so one chunk's guess does
not make "Parmesan" a person. Noun phrases are typed activity or object and
mapped onto the configured types (activity -> event, object -> concept when
those are what the run uses). Two entities seen in the same sentence are
related; the evidence sentence is the description. Each chunk also lists its
lower-case words, so merge can tell common words from names corpus-wide.
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import compress
from operator import itemgetter
from typing import NamedTuple

from factory.text import DATE_WORDS, STOPWORDS, norm_key, plain_sentences

_WORDS = lambda s: frozenset(s.split())  # noqa: E731

# Function words, frequent sentence starters, time words: capitalized they are still not names.
STOP = STOPWORDS | DATE_WORDS | _WORDS(
    """almost although always among another anyway around away back besides best better done early either else
    enough even every everything first however i'd i'll i'm i've instead it's last later least less let little lots
    maybe meanwhile might mine must near never next nobody none nothing often oh ok okay others otherwise perhaps
    please quite rather really since somehow someone sometimes soon still thank thanks that's though thus today
    together tomorrow tonight toward towards upon us well whatever whether whose within without yes yesterday yet
    morning afternoon evening night day days week weeks weekend month months year years time times hour hours minute
    minutes moment lot bit way ways kind sort part end start spring summer autumn fall winter
    went gets getting make made making take took taking go going goes come came coming see saw seen
    told ask asked think thought knew feel felt want wanted need needed keep kept look looked looking find found give
    gave put let's tried try trying started finished good bad small short whole dear notes today's
    finally honestly actually apparently afterwards eventually suddenly already probably definitely hopefully luckily
    sadly usually everyone everybody anyone somewhere nowhere
    mondays tuesdays wednesdays thursdays fridays saturdays sundays mon tue tues wed thu thur thurs fri sat sun
    two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred thousand
    brought fell began became bought caught drove ate drank slept woke won lost sent spoke held hung paid sold
    built left gone home along beside behind beyond inside outside across past via per onto amid despite except
    looks seems feels makes takes gives keeps comes ran walked talked spent read stood heard met lets set used using
    called calling telling saying"""
)
# Titles before a name: mark a person; dropped from the title when a full name follows.
HONORIFICS = _WORDS("dr dr. mr mr. mrs mrs. ms ms. prof prof. aunt uncle grandma grandpa granny nana cousin sir madam")
# Capitalized on their own, these name one person ("Mum said ...").
KIN = _WORDS("mum mom mummy mommy dad daddy mother father grandma grandpa granny nana gran grandad granddad")
# Connectors allowed inside a capitalized span ("Bank of the West", "Flour & Ember").
CONNECTORS = _WORDS("of the & de da del di du van von der la le y")
SUFFIX_TYPES = {
    "geo": _WORDS(
        "street st st. road rd avenue ave lane way river bay lake park gardens garden hill hills mountain room hall "
        "mountains valley beach bridge square station island isles coast forest falls city town village county "
        "harbour harbor port trail moor common green heath creek loch glen weir canal dock docks pier quay wharf "
        "marsh wood woods field fields cross gate row terrace crescent place drive"
    ),
    "organization": _WORDS(
        "studio studios bakery cafe café company co co. inc inc. ltd ltd. llc group university college school "
        "hospital clinic library museum club society bank press labs lab agency foundation institute council "
        "restaurant bar pub shop store gym centre center association team network partners kitchen collective "
        "courier times gazette herald post news guild corporation consortium organization organisation committee "
        "commission ministry department board union systems works industries motors airlines"
    ),
    "event": _WORDS(
        "marathon festival fair conference summit race concert wedding party show exhibition ceremony "
        "championship cup expo meetup workshop retreat reunion parade gala tournament regatta war"
    ),
}
# Words that open a place's name ("River Odel", "Mount Kestrel").
GEO_PREFIXES = _WORDS("river lake mount mt cape isle fort")
PERSON_VERBS = _WORDS(
    "said says told tells asked asks texted called laughed smiled replied wrote emailed messaged thinks thought wants "
    "wanted came brought sent joined suggested insisted admitted looked seemed sounded cooked hugged shouted cried "
    "whispered agreed explained promised offered invited hired rang phoned visited sighed grinned nodded born died "
    "married studied taught"
)
# He/she after a sentence's subject, or opening the next sentence, refers back to a person; it/its to a thing.
PRONOUNS = _WORDS("he she him her his hers himself herself")
THING_PRONOUNS = _WORDS("it its itself")
# "to" and "into" are left out: "go to Settings", "talked to Priya" say nothing about a place.
GEO_PREPOSITIONS = _WORDS("in at near from")
# Nationality and language adjectives: capitalized, never an entity on their own ("an English mathematician").
DEMONYMS = _WORDS(
    "american english british french german italian spanish dutch polish russian chinese japanese indian irish "
    "scottish welsh swedish norwegian danish finnish greek roman hungarian austrian swiss canadian australian "
    "mexican brazilian african european asian arab arabic jewish christian muslim catholic protestant latin hebrew "
    "korean turkish persian egyptian portuguese belgian czech ukrainian soviet victorian medieval"
)
ACTIVITY_HEADS = _WORDS(
    "run runs class classes walk walks hike swim session sessions practice training workout lesson lessons "
    "meeting meetings shift shifts trip trips ride dinner lunch breakfast yoga"
)
# Verbs that end a noun phrase ("the display shows", "the pump runs").
PHRASE_VERBS = _WORDS(
    "shows works runs stops starts turns needs takes makes goes comes gets lights flashes appears means uses "
    "keeps reaches returns remains stays holds fills heats drips beeps blinks displays opens closes becomes"
)
# A noun phrase's kind -> the configured types it may take, in order of preference.
PHRASE_TYPES = {"activity": ("activity", "concept", "event"), "object": ("object", "concept")}
# Words, numbers (which end a span: "Section 5 Safety" is not one name), '&', and any other mark (also a span end).
_TOKEN = re.compile(r"[^\W\d_][\w'’\-]*\.?|\d[\w.,:/\-]*|&|[^\w\s'’]")


_SUFFIX_TYPE = {w: etype for etype, words in SUFFIX_TYPES.items() for w in words}


def _strip_possessive(tok: str) -> str:
    for s in ("'s", "’s"):
        if tok.endswith(s):
            return tok[: -len(s)]
    return tok.rstrip("'’")


def _cue_votes(votes: dict[str, int], low: tuple[str, ...], i: int, j: int) -> None:
    """Add the type cues of the span low[i:j] (lower-cased words of its sentence) to `votes` (no cue: no vote)."""
    span = low[i:j]
    # "in the United States": the preposition before an article counts.
    k = i - 2 if i >= 2 and low[i - 1] == "the" else i - 1
    before = low[k] if k >= 0 else ""
    after = low[j] if j < len(low) else ""
    after2 = low[j + 1] if j + 1 < len(low) else ""
    if span[0] in HONORIFICS or (len(span) == 1 and span[0] in KIN):
        votes["person"] += 3
    if "&" in span:
        votes["organization"] += 3
    # The head noun ends the name or comes before "of" ("University of Edinburgh").
    for etype in {_SUFFIX_TYPE[w] for n, w in enumerate(span)
                  if w in _SUFFIX_TYPE and (n == len(span) - 1 or span[n + 1] in CONNECTORS)}:
        votes[etype] += 3
    if len(span) > 1 and span[0] in GEO_PREFIXES:
        votes["geo"] += 3
    if after in PERSON_VERBS or (after, after2) in (("and", "i"), (",", "who"), (",", "whose")):
        votes["person"] += 1
    if i and low[i - 1] == "by" and len(span) == 2:  # "a study by Ada Stone" (but "commemorated by the Brandt Medal")
        votes["person"] += 1
    if before in GEO_PREPOSITIONS:
        votes["geo"] += 1


def _spans(low: tuple[str, ...], caps: tuple[bool, ...], ends: tuple[bool, ...]) -> list[tuple[int, int]]:
    """[start, end) of maximal capitalized runs, connectors allowed between capitalized words.

    `ends[k]` marks a possessive ("Tomas's"): the span stops after it, so
    "Priya's Greenline Studio" is two names, not one; unless a lone place or
    company word follows ("Saint Anselm's Bridge", "Tanners' Row").
    """
    out, i, n = [], 0, len(low)
    while i < n:
        if not caps[i]:
            i += 1
            continue
        j = i + 1
        while j < n:
            if ends[j - 1]:
                if caps[j] and low[j] in _SUFFIX_TYPE and not (j + 1 < n and caps[j + 1]):
                    j += 1
                break
            if caps[j]:
                j += 1
            elif low[j] in CONNECTORS and j + 1 < n and caps[j + 1] and j > i:
                j += 2
            else:
                break
        out.append((i, j))
        i = j
    return out


def _title(words: list[str]) -> str:
    """Display title: honorific kept only before a single name ("Aunt Rosa", but "Helen Okafor")."""
    if words[0].lower() in HONORIFICS and len(words) > 2:
        words = words[1:]
    return " ".join(words).replace(" .", ".")


def _phrases(words: tuple[str, ...], content: tuple[bool, ...]) -> list[tuple[str, str]]:
    """Runs of 2-3 lower-case content words, as (phrase, activity | object)."""
    out = []
    run: list[str] = []
    for w, ok in zip((*words, "."), (*content, False)):
        if ok and len(run) < 3:
            run.append(w)
            continue
        if len(run) >= 2:
            head = run[-1]
            out.append((" ".join(run), "activity" if head.endswith("ing") or head in ACTIVITY_HEADS else "object"))
        run = [w] if ok else []
    return out


def _label(word: str) -> bool:
    """A number or a lone capital: what follows a label word ("Section 5", "Class B"), not a name's."""
    return word[0].isdigit() or len(word) == 1 and word.isupper()


def _pronoun_vote(low: tuple[str, ...]) -> int:
    """+1 when these (lower-case) words refer back with he/she, -1 with it/its, else 0."""
    return 1 if not PRONOUNS.isdisjoint(low) else -1 if not THING_PRONOUNS.isdisjoint(low) else 0


class _Token(NamedTuple):
    word: str  # without a trailing period (honorifics keep theirs) or a possessive
    raw: str  # with its possessive (inside a name: "Saint Anselm's Bridge")
    low: str
    possessive: bool
    name_part: bool  # capitalized and not a stop word, or an honorific: can be part of a name
    lower_word: bool  # a lower-case word worth counting corpus-wide
    content: bool  # can be part of a lower-case noun phrase
    long: bool  # a word of four letters or more (title-case headings are judged on these)


# Token strings repeat (names, function words): each is analysed once per worker process.
_TOKENS: dict[str, _Token | None] = {}


def _analyse(w: str) -> _Token | None:
    lw = w.lower()
    if w[-1] == "." and lw not in HONORIFICS:
        w, lw = w.rstrip("."), lw.rstrip(".")
    base = _strip_possessive(w) if "'" in w or "’" in w else w
    if not base:
        return None
    if base != w:
        lw = base.lower()
    name_part = base[0].isupper() and (lw in HONORIFICS or lw not in STOP and len(base.rstrip(".")) > 1
                                       and base.rstrip(".").replace("-", "").replace("'", "").isalpha())
    plain = base.isalpha() and base.islower() and len(base) > 2 and base not in STOP
    # Past tenses and participles ("walked home", "the engine designed by") are not nouns; "bed", "speed" are.
    content = (plain and base not in PHRASE_VERBS and not base.endswith("ly")
               and not (base.endswith("ed") and len(base) > 4 and not base.endswith("eed")))
    return _Token(base, w, lw, base != w, name_part, plain, content, len(base) > 3 and base.isalpha())


def _tokens(sent: str) -> list[_Token]:
    out = []
    for w in _TOKEN.findall(sent):
        t = _TOKENS.get(w)
        if t is None:
            if len(_TOKENS) > 500_000:
                _TOKENS.clear()
            t = _TOKENS[w] = _analyse(w) or _NONE
        if t is not _NONE:
            out.append(t)
    return out


_NONE = _Token("", "", "", False, False, False, False, False)


def _title_cased(toks: list[_Token], sent: str) -> bool:
    """A heading in title case ("Water Quality and the Filter Cartridge"): its capitals are style, not names."""
    long = [t.word for t in toks if t.long]
    return len(long) >= 2 and not sent.endswith((".", "!", "?")) and sum(w[0].isupper() for w in long) >= 0.75 * len(long)


def _mention(initial_only: bool) -> dict:
    """What one chunk says about one entity: title and type-cue counts, evidence sentences."""
    return {"titles": defaultdict(int), "votes": defaultdict(int), "sents": [], "initial_only": initial_only}


def extract_rules(text: str, entity_types: list[str], noun_phrases: bool = True) -> tuple[list[dict], list[dict], list[str]]:
    """Entities, same-sentence co-occurrence relationships and the lower-case words of one chunk.

    An entity's `type` is the configured type its cues in this chunk vote for,
    or "" when nothing here says what it is. `initial_only` says every mention
    in this chunk opened a sentence or a table cell, or sat in a title-cased
    heading, where any word is capitalized. A lone word before a number or a
    lone capital is a label ("Section 5", "Class B"), not a name.
    """
    found: dict[str, dict] = {}
    pair_sents: dict[tuple[str, str], list[str]] = defaultdict(list)
    lower_words: set[str] = set()
    subject = None  # the key of the previous sentence's opening name
    for sent in plain_sentences(text):
        toks = _tokens(sent)
        if not toks:
            continue
        words, raws, low, ends, caps, lower, content, _ = zip(*toks)
        lower_words.update(compress(words, lower))
        if subject:
            found[subject]["votes"]["person"] += _pronoun_vote(low[:1])
        subject = None
        keys_here: set[str] = set()
        heading = _title_cased(toks, sent)
        for i, j in _spans(low, caps, ends):
            span = [*raws[i:j - 1], words[j - 1]]  # a possessive inside the name stays, the last one goes
            if j - i == 1 and (low[i] in HONORIFICS and low[i] not in KIN or j < len(words) and _label(words[j])):
                continue
            title = _title(span)
            key = norm_key(title)
            if not key:
                continue
            e = found.get(key) or found.setdefault(key, _mention(True))
            e["titles"][title] += 1
            _cue_votes(e["votes"], low, i, j)
            e["initial_only"] &= i == 0 or heading
            if sent not in e["sents"]:
                e["sents"].append(sent)
            if not keys_here and i <= 2:
                subject = key
                e["votes"]["person"] += _pronoun_vote(low[j:])
            keys_here.add(key)
        if noun_phrases:
            for phrase, kind in _phrases(words, content):
                etype = next((t for t in PHRASE_TYPES[kind] if t in entity_types), None)
                if etype is None:
                    continue
                e = found.get(phrase) or found.setdefault(phrase, _mention(False))
                e["titles"][phrase] += 1
                e["votes"][etype] += 1
                if sent not in e["sents"]:
                    e["sents"].append(sent)
                keys_here.add(phrase)
        ordered = sorted(keys_here)
        for a in range(len(ordered)):
            for b in range(a + 1, len(ordered)):
                pair_sents[(ordered[a], ordered[b])].append(sent)
    rank = {t: i for i, t in enumerate(entity_types)}
    entities = []
    for key, e in found.items():
        allowed = [(v, t) for t, v in e["votes"].items() if t in rank and v > 0]
        entities.append({
            "title": max(e["titles"].items(), key=itemgetter(1))[0],  # the most used; ties: the first seen
            "type": max(allowed, key=lambda vt: (vt[0], -rank[vt[1]]))[1] if allowed else "",
            "description": "\n".join(e["sents"]),
            "initial_only": e["initial_only"],
        })
    titles = {key: ent["title"] for key, ent in zip(found, entities)}
    relationships = [
        {"source": titles[a], "target": titles[b], "description": "\n".join(s), "weight": float(len(s))}
        for (a, b), s in pair_sents.items()
    ]
    return entities, relationships, sorted(lower_words)
