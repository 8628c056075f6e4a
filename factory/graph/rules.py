"""The no-LLM extractor: named spans and noun phrases by rules, co-occurrence edges.

Needs nothing downloaded at run time. Per chunk it finds
  * capitalized spans ("Tomas Eriksen", "Old Mill Gardens", "Flour & Ember"),
    with honorifics ("Dr.", "Aunt") and sentence-initial common words handled;
  * noun phrases: runs of 2-3 lower-case content words ("sourdough starter");
and types them by cues: honorifics and speech verbs (person), place suffixes
and prepositions (geo), company suffixes and '&' (organization), event
suffixes, '-ing'/activity heads (activity). Two entities seen in the same
sentence are related; the evidence sentence is the description. Frequency
pruning happens at merge, where corpus-wide counts are known.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from factory.graph.text import norm_key, sentences

_WORDS = lambda s: frozenset(s.split())  # noqa: E731

# Function words, frequent sentence starters, time words: capitalized they are still not names.
STOP = _WORDS(
    """a about above after again against all almost also although always am among an and another any anyway
    are around as at away back be because been before being below besides best better between both but by
    can could did do does doing done down during each early either else enough even ever every everything
    few first for from further had has have having he her here hers herself him himself his how however i
    i'd i'll i'm i've if in instead into is it it's its itself just last later least less let like little
    lots many maybe me meanwhile might mine more most much must my myself near never next no nobody none nor
    not nothing now of off often oh ok okay on once one only or other others otherwise our ours ourselves
    out over own perhaps please quite rather really same she should since so some somehow someone something
    sometimes soon still such than thank thanks that that's the their theirs them themselves then there
    these they this those though through thus to today together tomorrow tonight too toward towards
    under until up upon us very was we well were what whatever when where whether which while who whom whose
    why will with within without would yes yesterday yet you your yours yourself yourselves
    morning afternoon evening night day days week weeks weekend month months year years time times hour
    hours minute minutes moment lot bit thing things way ways kind sort part end start
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july
    august september october november december spring summer autumn fall winter
    went got get gets getting make made making take took taking go going goes come came coming see saw seen
    said say says told tell ask asked think thought know knew feel felt want wanted need needed keep kept
    look looked looking find found give gave put let's tried try trying started finished
    good bad small short whole next another dear note notes entry journal today's
    anyway finally honestly actually apparently afterwards eventually suddenly already almost probably
    definitely hopefully luckily sadly usually everyone everybody anything anyone somewhere nowhere
    mondays tuesdays wednesdays thursdays fridays saturdays sundays two three four five six seven eight nine
    ten eleven twelve twenty thirty forty fifty hundred thousand
    brought fell began became bought caught drove ate drank slept woke won lost sent spoke held hung paid sold
    built left gone home
    along beside behind beyond inside outside across against past via per onto upon amid despite except
    looks seems feels makes takes gives keeps goes comes ran walked talked spent wrote read sat stood
    felt heard met let lets put set used using tried trying called calling told telling says saying"""
)
# Honorifics: mark a person; dropped from the title when a full name follows.
HONORIFICS = _WORDS("dr dr. mr mr. mrs mrs. ms ms. prof prof. aunt uncle grandma grandpa granny nana cousin sir madam")
# Connectors allowed inside a capitalized span ("Bank of the West", "Flour & Ember").
CONNECTORS = _WORDS("of the & de da del di du van von der la le y")
SUFFIX_TYPES = {
    "geo": _WORDS(
        "street st st. road rd avenue ave lane way river bay lake park gardens garden hill hills mountain room hall "
        "mountains valley beach bridge square station island isles coast forest falls city town village county "
        "harbour harbor port trail moor common green heath creek loch glen"
    ),
    "organization": _WORDS(
        "studio studios bakery cafe café company co co. inc inc. ltd ltd. llc group university college school "
        "hospital clinic library museum club society bank press labs lab agency foundation institute council "
        "restaurant bar pub shop store gym centre center association team network partners kitchen collective "
        "courier times gazette herald post news"
    ),
    "event": _WORDS(
        "marathon festival fair conference summit race concert wedding party show exhibition ceremony "
        "championship cup expo meetup workshop retreat reunion parade gala tournament"
    ),
}
PERSON_VERBS = _WORDS(
    "said says told asked texted called laughed smiled replied wrote emailed messaged thinks thought wants "
    "wanted came brought sent joined suggested insisted admitted looked seemed sounded cooked hugged"
)
GEO_PREPOSITIONS = _WORDS("in to from near around across toward towards into through via")
ACTIVITY_HEADS = _WORDS(
    "run runs class classes walk walks hike swim session sessions practice training workout lesson lessons "
    "meeting meetings shift shifts trip trips ride dinner lunch breakfast yoga"
)
_TOKEN = re.compile(r"[A-Za-z][\w'’\-]*\.?|&|[,;:()\"“”!?—–]")


def _strip_possessive(tok: str) -> str:
    for s in ("'s", "’s"):
        if tok.endswith(s):
            return tok[: -len(s)]
    return tok.rstrip("'’")


def _is_cap(tok: str) -> bool:
    word = tok.rstrip(".")
    return tok[0].isupper() and tok.lower() not in STOP and len(word) > 1 and word.replace("-", "").replace("'", "").isalpha()


def _type_votes(words: list[str], before: str, after: str) -> Counter:
    votes: Counter = Counter()
    low = [w.lower() for w in words]
    if low[0] in HONORIFICS:
        votes["person"] += 3
    if "&" in low:
        votes["organization"] += 3
    for etype, suffixes in SUFFIX_TYPES.items():
        if low[-1] in suffixes:
            votes[etype] += 3
    if after in PERSON_VERBS:
        votes["person"] += 1
    if before in GEO_PREPOSITIONS:
        votes["geo"] += 1
    # A bare one- or two-word name with no cue is most often a person in personal writing.
    votes["person" if len(words) <= 2 else "organization"] += 0.5
    return votes


def _spans(words: list[str]) -> list[tuple[int, int]]:
    """[start, end) of maximal capitalized runs, connectors allowed between capitalized words."""
    out, i, n = [], 0, len(words)
    while i < n:
        if not (_is_cap(words[i]) or words[i].lower() in HONORIFICS and words[i][0].isupper()):
            i += 1
            continue
        j = i + 1
        while j < n:
            if _is_cap(words[j]):
                j += 1
            elif words[j].lower() in CONNECTORS and j + 1 < n and _is_cap(words[j + 1]) and j > i:
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


def _phrases(words: list[str], types: set[str]) -> list[tuple[str, str]]:
    """Runs of 2-3 lower-case content words, typed activity or object."""
    out = []
    run: list[str] = []
    for w in words + ["."]:
        ok = w.isalpha() and w.islower() and len(w) > 2 and w not in STOP and not w.endswith("ly")
        # A phrase opening with a past-tense verb ("walked home") is not a noun phrase.
        ok = ok and not (not run and w.endswith("ed"))
        if ok and len(run) < 3:
            run.append(w)
            continue
        if len(run) >= 2:
            head = run[-1]
            etype = "activity" if head.endswith("ing") or head in ACTIVITY_HEADS else "object"
            if etype in types:
                out.append((" ".join(run), etype))
        run = [w] if ok else []
    return out


def extract_rules(text: str, entity_types: list[str], noun_phrases: bool = True) -> tuple[list[dict], list[dict]]:
    """Entities and same-sentence co-occurrence relationships of one chunk.

    Entities carry `initial_only` (every mention in this chunk opened a sentence)
    and `lowercase` (how often the word also appears in lower case), so merge can
    drop one-word "names" that were only capitalized by position ("Dinner").
    """
    types = set(entity_types)
    found: dict[str, dict] = {}
    pair_sents: dict[tuple[str, str], list[str]] = defaultdict(list)
    lower_words = Counter(w for w in _TOKEN.findall(text) if w.islower())
    for sent in sentences(text):
        raw = _TOKEN.findall(sent)
        words = [_strip_possessive(w) if not w.endswith(".") or w.lower() in HONORIFICS else w.rstrip(".") for w in raw]
        words = [w for w in words if w]
        keys_here: set[str] = set()
        for i, j in _spans(words):
            span = words[i:j]
            if len(span) == 1 and span[0].lower() in HONORIFICS:
                continue
            title = _title(span)
            votes = _type_votes(span, words[i - 1].lower() if i else "", words[j].lower() if j < len(words) else "")
            key = norm_key(title)
            if not key:
                continue
            e = found.setdefault(key, {"titles": Counter(), "votes": Counter(), "sents": [], "initial_only": True})
            e["titles"][title] += 1
            e["votes"].update(votes)
            e["initial_only"] &= i == 0 and len(span) == 1
            if sent not in e["sents"]:
                e["sents"].append(sent)
            keys_here.add(key)
        if noun_phrases:
            for phrase, etype in _phrases(words, types):
                e = found.setdefault(phrase, {"titles": Counter(), "votes": Counter(), "sents": [], "initial_only": False})
                e["titles"][phrase] += 1
                e["votes"][etype] += 1
                if sent not in e["sents"]:
                    e["sents"].append(sent)
                keys_here.add(phrase)
        ordered = sorted(keys_here)
        for a in range(len(ordered)):
            for b in range(a + 1, len(ordered)):
                pair_sents[(ordered[a], ordered[b])].append(sent)
    entities = []
    for key, e in found.items():
        allowed = [(v, t) for t, v in e["votes"].items() if t in types]
        etype = max(allowed, key=lambda vt: (vt[0], -entity_types.index(vt[1])))[1] if allowed else ""
        entities.append({
            "title": e["titles"].most_common(1)[0][0],
            "type": etype,
            "description": "\n".join(e["sents"]),
            "initial_only": e["initial_only"],
            # How often the word occurs in lower case here: a common word, not a name, when that is frequent.
            "lowercase": lower_words.get(key, 0) if " " not in key else 0,
        })
    titles = {key: ent["title"] for key, ent in zip(found, entities)}
    relationships = [
        {"source": titles[a], "target": titles[b], "description": "\n".join(s), "weight": float(len(s))}
        for (a, b), s in pair_sents.items()
    ]
    return entities, relationships
