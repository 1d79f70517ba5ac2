"""Read a free-worded prompt into the embedded world's scene terms, and lay the scene out.

Why: the embedded model's text encoder knows only the words of its training captions (a 756-token
vocabulary, one token per world word), and it never saw two objects without positions or a
relation between them. Measured, it draws a single object asked in its own words right ~95 % of
the time but binds colours to the right one of two objects ~6 % of the time, and prompts in
other words ("a star in red", "against a navy backdrop") fail. So, like LLM-grounded diffusion
(Lian et al. 2023: text -> layout -> layout-grounded generation), the Studio first reads the
prompt into objects, attributes, a background and relations (this module: a closed-vocabulary
reader, no model), then chooses a cell for every object, and then draws each object in its own
region from a caption in the model's own wording (``engines.pipelines.regional``).

The reader is lexical and order-based, not a template match: attribute words (with synonyms,
plurals, hyphenation and British spelling) attach to the shape noun of their clause —
pre-modifiers to the noun that follows, post-modifiers ("a star in red", "a circle with stripes")
to the noun before, the split between two nouns at the last conjunction ("and", "with", ",",
"as well as", ...) between them. Background colours never coincide with object colours in the
world, so a background word is the background wherever it stands. Relations ("left of",
"on the right-hand side of", "above", "on top of", "beneath", ...) link the nouns around them
("below the circle is a star" puts the star below). Counts ("two red stars") repeat an object.
Words it does not use are reported in ``ignored``, never guessed.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace

import numpy as np

from engines.world.generator import BACKGROUNDS, CELL, COLORS, POSITIONS, SHAPES, SIZE, SIZES, relation_holds

MAX_OBJECTS = 4  # regions per image (each costs one more U-Net row per step)

# -- lexicon: phrase (normalised words) -> (kind, value) ------------------------------------------
_LEX: dict[tuple[str, ...], tuple[str, str]] = {}


def _add(kind: str, value: str, *phrases: str) -> None:
    for p in phrases:
        _LEX[tuple(p.split())] = (kind, value)


for _s in SHAPES:
    _add("shape", _s, _s, _s + "s" if _s != "cross" else "crosses")
_add("shape", "circle", "disc", "discs", "disk", "disks", "round shape")
_add("shape", "ring", "donut", "donuts", "doughnut", "doughnuts", "annulus", "hoop", "hoops")
_add("shape", "diamond", "rhombus", "rhombi", "rhombuses", "lozenge", "lozenges")
_add("shape", "cross", "plus sign", "plus signs")
_add("shape", "square", "box shape")
for _c in COLORS:
    _add("color", _c, _c, _c + "ish")
_add("color", "red", "crimson", "scarlet", "reddish")
_add("color", "orange", "orangey")
_add("color", "yellow", "golden", "yellowish")
_add("color", "green", "lime", "lime green", "greenish")
_add("color", "cyan", "turquoise", "aqua", "teal", "light blue")
_add("color", "blue", "bluish", "royal blue")
_add("color", "purple", "violet", "lilac", "purplish", "magenta")
_add("color", "pink", "rose", "pinkish", "hot pink")
for _b in BACKGROUNDS:
    _add("background", _b, _b)
_add("background", "gray", "grey", "light gray", "light grey", "dark gray", "dark grey", "silver", "grayish",
     "greyish")
_add("background", "navy", "navy blue", "dark blue", "midnight blue")
_add("background", "beige", "tan", "cream", "sand", "sandy", "khaki")
_add("background", "dark green", "forest green", "deep green", "bottle green")
_add("background", "white", "off white", "whitish")
_add("background", "black", "pitch black", "blackish")
_add("size", "small", "small", "tiny", "little", "mini", "miniature", "smallish", "wee", "small sized", "small size",
     "little sized", "teeny", "itty bitty", "petite")
_add("size", "medium", "medium", "medium sized", "medium size", "mid sized", "mid size", "middle sized", "midsize",
     "midsized", "average sized", "average size", "moderate sized", "moderately sized", "regular sized",
     "normal sized")
_add("size", "large", "large", "big", "huge", "giant", "enormous", "large sized", "large size", "big sized",
     "oversized", "massive", "jumbo", "bigger", "larger", "gigantic")
_add("style", "solid", "solid", "filled", "filled in", "fully filled", "solid colored", "solid coloured",
     "solid fill", "solid color", "solid colour", "filled shape", "flat colored", "opaque")
_add("style", "striped", "striped", "stripes", "stripe", "stripy", "stripey", "stripe pattern", "striped pattern",
     "pinstriped", "pinstripes", "banded", "stripe patterned", "hatched")
_add("style", "dotted", "dotted", "dots", "dot pattern", "polka dot", "polka dots", "polka dotted", "spotted",
     "spots", "spotty", "dotty", "speckled", "dot patterned")
_add("style", "outlined", "outlined", "outline", "outlines", "hollow", "outline only", "only the outline",
     "just the outline", "just an outline", "line drawing", "unfilled", "contour", "wireframe",
     "in outline", "line art", "outlined only")
# negated fills and line patterns
_add("style", "outlined", "not filled", "not filled in", "non filled", "no fill", "without fill", "without a fill",
     "without any fill", "not solid", "unfilled in")
_add("style", "solid", "not hollow", "not outlined")
_add("style", "striped", "with lines", "lines", "line pattern", "with a line pattern")
# "plain": a solid fill in the training captions, but "a plain navy background" is a background
_add("plain", "solid", "plain")
# position words: vertical / horizontal / centre parts, combined per object
for _w in ("top", "upper", "up", "high", "highest", "topmost", "uppermost"):
    _add("vpos", "top", _w)
for _w in ("bottom", "lower", "low", "down", "lowest", "bottommost", "lowermost"):
    _add("vpos", "bottom", _w)
for _w in ("left", "lefthand", "leftmost", "left hand", "left side"):
    _add("hpos", "left", _w)
for _w in ("right", "righthand", "rightmost", "right hand", "right side"):
    _add("hpos", "right", _w)
for _w in ("center", "centre", "middle", "central", "centered", "centred", "centrally", "midpoint",
           "dead center"):
    _add("cpos", "center", _w)
# relations "A <rel> B"; the directional forms need "of" ("on the left" alone is a position)
for _p in ("left of", "to the left of", "on the left of", "at the left of", "on the left side of",
           "to the left side of", "on the left hand side of", "to the left hand side of", "leftward of",
           "left side of", "left hand side of", "at the left side of"):
    _add("rel", "left of", _p)
for _p in ("right of", "to the right of", "on the right of", "at the right of", "on the right side of",
           "to the right side of", "on the right hand side of", "to the right hand side of", "rightward of",
           "right side of", "right hand side of", "at the right side of"):
    _add("rel", "right of", _p)
for _p in ("above", "over", "on top of", "atop", "higher than", "up above", "on the top of", "directly above",
           "right above", "just above", "on the upper side of"):
    _add("rel", "above", _p)
for _p in ("below", "under", "underneath", "beneath", "lower than", "down below", "directly below",
           "right below", "just below", "on the lower side of", "underneath of"):
    _add("rel", "below", _p)
# relations to a pronoun ("above it", "on its left"): B is the object mentioned before
_REL_FORMS: dict[str, list[str]] = {}
for _phrase, (_kind, _val) in list(_LEX.items()):
    if _kind == "rel":
        _REL_FORMS.setdefault(_val, []).append(" ".join(_phrase))
for _val, _forms in _REL_FORMS.items():
    for _f in _forms:
        for _pron in ("it", "them", "that", "this", "that one", "this one", "the first", "the other one",
                      "the first one"):
            _add("relp", _val, f"{_f} {_pron}")
for _side in ("left", "right"):
    for _pre in ("", "to ", "on ", "at ", "by "):
        for _suf in ("", " side", " hand side"):
            _add("relp", f"{_side} of", f"{_pre}its {_side}{_suf}")
    for _by in ("next to it", "beside it", "by it", "near it"):  # "a square next to it on the left"
        for _at in ("on the", "to the", "at the"):
            for _suf in ("", " side", " hand side"):
                _add("relp", f"{_side} of", f"{_by} {_at} {_side}{_suf}")
for _p in ("and", "with", "plus", "as well as", "together with", "along with", "alongside", "next to", "beside",
           "besides", "near", "by", "accompanied by", "paired with", "and also", "also", "then", "while",
           "whereas", "but", "opposite", "across from", "away from", "apart from", ",", ";", ".", ":", "&"):
    _add("sep", _p, _p)
for _p in ("a", "an", "one", "the", "another", "some", "single"):
    _add("det", _p, _p)
# "two shapes: a star and a ring" — a count of generic things is no object of its own
for _n in ("two", "2", "three", "3", "four", "4", "a few", "several", "some", "a couple of", "a pair of"):
    for _thing in ("shapes", "objects", "things", "items", "figures", "elements", "symbols", "icons", "forms"):
        _add("gen", _n, f"{_n} {_thing}")
for _thing in ("shapes", "objects", "things", "items", "figures", "elements", "both shapes", "the shapes",
               "the objects"):
    _add("gen", "", _thing)
for _w, _n in (("two", 2), ("2", 2), ("pair of", 2), ("a pair of", 2), ("couple of", 2), ("a couple of", 2),
               ("three", 3), ("3", 3), ("four", 4), ("4", 4), ("twin", 2), ("twins", 2)):
    _add("count", str(_n), _w)
for _p in ("both", "each", "all", "every", "each one", "both of them", "all of them", "both shapes", "both objects"):
    _add("all", _p, _p)
for _p in ("background", "backdrop", "backround", "bg", "back ground", "background color", "background colour",
           "canvas", "field", "surface", "wall", "backgrounds"):
    _add("bgword", _p, _p)
_REL_AS_POS = {"left of": ("hpos", "left"), "right of": ("hpos", "right"), "above": ("vpos", "top"),
               "below": ("vpos", "bottom")}
_PREPS = frozenset("in at on by near inside within into over under next beside".split())
_MAX_PHRASE = max(len(k) for k in _LEX)
_WORD = re.compile(r"[a-z0-9]+|[,;.:&]")
_BRIT = {"colour": "color", "coloured": "colored", "colours": "colors"}


@dataclass
class ObjSpec:
    """One object as asked: only the attributes the prompt names (None = the model's choice)."""

    shape: str
    color: str | None = None
    size: str | None = None
    style: str | None = None
    position: str | None = None


@dataclass
class ParsedPrompt:
    objects: list[ObjSpec]
    background: str | None
    relations: list[tuple[int, str, int]]  # (a, relation, b): objects[a] <relation> objects[b]
    ignored: list[str] = field(default_factory=list)  # words not used (reported, not guessed)

    def as_dict(self) -> dict:
        return {"objects": [o.__dict__ for o in self.objects], "background": self.background,
                "relations": [list(r) for r in self.relations], "ignored": self.ignored}

    def describe(self) -> str:
        """"a red square (left of #2), a blue circle; background navy" — for the UI."""
        parts = []
        for i, o in enumerate(self.objects):
            words = " ".join(w for w in (o.size, o.color, o.style, o.shape) if w)
            if o.position:
                words += f" at {o.position}"
            rel = [f"{r} #{b + 1}" for a, r, b in self.relations if a == i]
            parts.append(f"#{i + 1} {words}" + (f" ({', '.join(rel)})" if rel else ""))
        return "; ".join(parts) + (f"; background {self.background}" if self.background else "")


def _tokens(text: str) -> list[str]:
    t = text.lower().replace("-", " ").replace("_", " ").replace("'s", "")
    return [_BRIT.get(w, w) for w in _WORD.findall(t)]


def _lex(words: list[str]) -> list[tuple[str, str, str, int]]:
    """Longest-match phrases: (kind, value, surface text, word index)."""
    out, i = [], 0
    while i < len(words):
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            hit = _LEX.get(tuple(words[i:i + n]))
            if hit:
                out.append((hit[0], hit[1], " ".join(words[i:i + n]), i))
                i += n
                break
        else:
            out.append(("word", words[i], words[i], i))
            i += 1
    return out


def _position(parts: list[tuple[str, str]]) -> str | None:
    """Combine vertical/horizontal/centre words ("upper", "left", "corner") into a cell name."""
    v = next((val for k, val in reversed(parts) if k == "vpos"), None)
    h = next((val for k, val in reversed(parts) if k == "hpos"), None)
    if v and h:
        return f"{v} {h}"
    if v or h:
        return v or h
    return "center" if any(k == "cpos" for k, _ in parts) else None


_FILLER = frozenset(
    "in on at of to is are be it its it's colored painted shaded tinted toned hued colour color in the with "
    "shape shapes object objects pattern patterned patterns fill filling fills style styled side sides "
    "corner corners edge edges area spot region part position positioned placed located sitting sits sit "
    "sat set standing stands lying lies resting rests put draw drawn drawing make made show shows showing "
    "render rendered create generate generated give picture image photo illustration scene of there "
    "please i want would like me us let see just only very really nice simple that which who where has "
    "have having should must will can could appear appears appearing featuring features feature "
    "containing contains contain sized size around near close onto into upon against over across within "
    "so d ll m re ve s nothing else just only empty blank scene frame composition arrangement arrange add put "
    "place inside far way along both directly exactly slightly toward towards from as like plain".split())


_ATTR = ("color", "size", "style")


def _members(toks: list[tuple[str, str, str, int]]) -> list[tuple[str, str, str, int]]:
    """A counted shape whose members are then described one by one ("two circles: a striped pink
    one and a yellow one", "two diamonds, one pink and one cyan", "two rings: green on the left,
    cyan on the right", "two crosses, the cyan one left of the blue one") is those members, not
    n copies: each member becomes a mention of the shape, and the count becomes a lead-in whose
    own attributes ("two big circles: ...") go to every member; fewer members than the count
    leave the rest as the group says ("two circles, a red one": a circle and a red circle). Only
    when no other shape is named after the group and no more members than the count."""
    for c, t in enumerate(toks):
        if t[0] != "count" or int(t[1]) < 2:
            continue
        s = c + 1
        while s < len(toks) and toks[s][0] in _ATTR:
            s += 1
        if s >= len(toks) or toks[s][0] != "shape" or any(x[0] == "shape" for x in toks[s + 1:]):
            continue
        segs, cur = [], []
        for k in range(s + 1, len(toks)):
            if toks[k][0] in ("sep", "rel", "relp"):
                segs.append(cur)
                cur = []
            else:
                cur.append(k)
        segs.append(cur)
        members = [seg for seg in segs if any(toks[k][0] in _ATTR for k in seg)]
        if not members or len(members) > int(t[1]):
            continue
        shape = toks[s][1]
        out = list(toks)
        if len(members) == int(t[1]):
            out[c] = ("all", "all", t[2], t[3])
            out[s] = ("gen", "", toks[s][2], toks[s][3])
        else:  # "two circles, a red one": the red one and one circle as the group says
            out[c] = ("count", str(int(t[1]) - len(members)), t[2], t[3])
        insert_after: list[int] = []
        for seg in members:
            for k in seg:  # "the big one and the blue one" are two members, not a reference back
                if toks[k][0] == "det" and toks[k][1] in ("the", "that", "this"):
                    out[k] = ("det", "a", toks[k][2], toks[k][3])
            ones = [k for k in seg if toks[k][2] in ("one", "ones") and k - 1 in seg and toks[k - 1][0] in _ATTR]
            if ones:
                out[ones[0]] = ("shape", shape, toks[ones[0]][2], toks[ones[0]][3])
            else:  # "one pink", "green on the left": the shape after the member's last attribute
                insert_after.append(max(k for k in seg if toks[k][0] in _ATTR))
        for k in sorted(insert_after, reverse=True):
            out.insert(k + 1, ("shape", shape, "", toks[k][3]))
        return out
    return toks


def parse(prompt: str) -> ParsedPrompt | None:
    """The scene a prompt asks for, or None when it names no world shape (then the prompt is
    used as typed). Attributes attach to the shape of their clause (see the module doc)."""
    toks = _members(_lex(_tokens(prompt)))
    # "the purple one": a reference by colour to an object already named; read the prompt once to
    # learn which shape has that colour, then read "one" as that shape
    refs = [k for k in range(2, len(toks)) if toks[k][2] in ("one", "ones") and toks[k - 1][0] == "color"
            and toks[k - 2][1] in ("the", "that", "this")]
    if refs:
        first = _parse_tokens(list(toks))
        if first is not None:
            for k in refs:
                shape = next((o.shape for o in first.objects if o.color == toks[k - 1][1]), None)
                if shape is not None:
                    toks[k] = ("shape", shape, toks[k][2], toks[k][3])
    return _parse_tokens(toks)


def _parse_tokens(toks: list[tuple[str, str, str, int]]) -> ParsedPrompt | None:
    # "plain" next to a background word describes the background, not a fill
    for k, (kind, val, surf, i) in enumerate(toks):
        if kind == "plain":
            near_bg = any(t[0] in ("background", "bgword") for t in toks[k + 1:k + 3])
            toks[k] = ("word" if near_bg else "style", "plain" if near_bg else "solid", surf, i)
    # "a blue background": a colour the world has only for objects, said of the background — not the
    # object's colour; reported as ignored
    for k, (kind, val, surf, i) in enumerate(toks):
        if kind == "color" and k + 1 < len(toks) and toks[k + 1][0] == "bgword":
            toks[k] = ("word", val, surf, i)
    shapes = [k for k, t in enumerate(toks) if t[0] == "shape"]  # shape mentions (token indices)
    if not shapes:
        return None
    # "a circle right in the middle": "right" as an intensifier (after a noun, before a preposition),
    # not the side ("in the top right on beige", "on the right in blue" keep it)
    for k, (kind, val, surf, i) in enumerate(toks):
        if surf == "right" and 0 < k < len(toks) - 1 and toks[k + 1][2] in _PREPS \
                and toks[k - 1][0] not in ("vpos", "cpos", "det", "hpos") and toks[k - 1][2] not in ("far", "the"):
            toks[k] = ("gen", "", surf, i)
    # "over a dark green background": a preposition of the background, not a relation or a place
    for k, (kind, val, surf, i) in enumerate(toks):
        if kind == "rel":
            nxt = next((t for t in toks[k + 1:k + 5] if t[0] not in ("det", "word", "plain", "gen")), None)
            if nxt is not None and nxt[0] in ("background", "bgword"):  # "upper right of a ... background"
                toks[k] = _REL_AS_POS[val] + (surf, i) if val in ("left of", "right of") else ("gen", "", surf, i)
    # a relation with no object on one side ("a star above", "left of the picture") names a place
    for k, (kind, val, surf, i) in enumerate(toks):
        if kind == "rel" and not (any(s < k for s in shapes) and any(s > k for s in shapes)) \
                and sum(s > k for s in shapes) < 2:
            toks[k] = _REL_AS_POS[val] + (surf, i)
    background = next((t[1] for t in reversed(toks) if t[0] == "background"), None)
    # which shape mention each attribute word belongs to
    owner: dict[int, list[int]] = {}
    for k, t in enumerate(toks):
        if t[0] not in ("color", "size", "style", "vpos", "hpos", "cpos", "count"):
            continue
        prev = [s for s in shapes if s < k]
        nxt = [s for s in shapes if s > k]
        if not prev:
            owner[k] = [shapes[0]]
        elif not nxt:
            owner[k] = [prev[-1]]
        else:
            a, b = prev[-1], nxt[0]
            cuts = [j for j in range(a + 1, b) if toks[j][0] in ("sep", "rel", "relp")]
            dets = [j for j in range(a + 1, b) if toks[j][0] in ("det", "count")]
            cut = cuts[-1] if cuts else (dets[-1] - 1 if dets else a)
            # "..., and a medium-sized, filled pink square": a determiner after the last cut
            # before this word opens the next noun phrase; a comma after it only lists adjectives
            before = [j for j in cuts if j < k]
            if before and any(before[-1] < j < k for j in dets) and t[0] != "count" \
                    and all(toks[j][2] == "," for j in cuts if j > k) and not any(k < j < b for j in dets):
                cut = k - 1
            if t[0] == "count":
                cut = min(cut, k - 1)
            owner[k] = [a] if k <= cut else [b]
    # "..., both striped": attributes after an "all" word (with no shape after it) go to every object;
    # so do those of a lead-in before the first shape ("Both big: a red circle and a cyan ring")
    for k, t in enumerate(toks):
        if t[0] == "all" and not any(s > k for s in shapes):
            for j in range(k + 1, len(toks)):
                if j in owner:
                    owner[j] = list(shapes)
        elif t[0] == "all" and k < shapes[0]:
            stop = next((j for j in range(k + 1, shapes[0]) if toks[j][0] == "sep"), None)
            for j in range(k + 1, stop if stop is not None else k + 1):
                if j in owner:
                    owner[j] = list(shapes)
    attrs: dict[int, dict[str, list]] = {s: {"color": [], "size": [], "style": [], "pos": [], "count": []}
                                         for s in shapes}
    used = set(shapes)
    for k, ss in owner.items():
        kind, val = toks[k][0], toks[k][1]
        key = "pos" if kind in ("vpos", "hpos", "cpos") else kind
        for s in ss:
            attrs[s][key].append((kind, val) if key == "pos" else val)
        used.add(k)
    # mentions -> objects: "the ring" after "a ring" is the same ring (unless it names another
    # colour); counts repeat an object
    objects: list[ObjSpec] = []
    obj_of: dict[int, int | None] = {}
    dropped = 0
    for s in shapes:
        a = attrs[s]
        # the first value wins when one object gets two ("a red star ... in blue" is a conflict anyway)
        spec = ObjSpec(toks[s][1], a["color"][0] if a["color"] else None, a["size"][0] if a["size"] else None,
                       a["style"][0] if a["style"] else None, _position(a["pos"]))
        det = toks[s - 1][1] if s > 0 and toks[s - 1][0] in ("det", "word") else None
        j = s - 1
        while det is None and j >= 0 and toks[j][0] in ("color", "size", "style"):
            j -= 1
            det = toks[j][1] if j >= 0 and toks[j][0] == "det" else None
        ref = next((i for i in range(len(objects) - 1, -1, -1) if objects[i].shape == spec.shape
                    and (spec.color is None or objects[i].color in (None, spec.color))), None) \
            if det in ("the", "that", "this") and not a["count"] else None
        if ref is not None:
            o = objects[ref]
            for f in ("color", "size", "style", "position"):
                if getattr(o, f) is None and getattr(spec, f) is not None:
                    setattr(o, f, getattr(spec, f))
            obj_of[s] = ref
            continue
        n = max(1, min(int(a["count"][-1]) if a["count"] else 1, MAX_OBJECTS))
        obj_of[s] = len(objects) if len(objects) < MAX_OBJECTS else None
        for _ in range(n):
            if len(objects) < MAX_OBJECTS:
                objects.append(replace(spec))
            else:
                dropped += 1
    # relations: the nouns on either side; a relation before the first noun relates the two that
    # follow it in reverse ("below the circle is a star": star below circle); with a pronoun
    # ("above it a heart", "a star to its left") the pronoun is the object mentioned before
    relations: list[tuple[int, str, int]] = []
    for k, t in enumerate(toks):
        if t[0] not in ("rel", "relp"):
            continue
        before = [obj_of[s] for s in shapes if s < k]
        after = [obj_of[s] for s in shapes if s > k]
        stop = next((j for j in range(k + 1, len(toks)) if toks[j][2] in (".", ";")), len(toks))
        after_here = [obj_of[s] for s in shapes if k < s < stop]
        if t[0] == "relp":
            if before and after_here:
                pair = (after_here[0], before[-1])
            elif len(before) >= 2:
                pair = (before[-1], before[-2])
            else:
                continue
        elif before and after:
            pair = (before[-1], after[0])
        elif len(after) >= 2:
            pair = (after[1], after[0])
        else:
            continue
        used.add(k)
        if pair[0] is not None and pair[1] is not None and pair[0] != pair[1]:
            relations.append((pair[0], t[1], pair[1]))
    used |= {k for k, t in enumerate(toks) if t[0] in ("background", "bgword", "sep", "det", "all", "gen")}
    ignored = [t[2] for k, t in enumerate(toks) if k not in used and t[2] not in _FILLER and t[0] != "plain"]
    if dropped:
        ignored.append(f"({dropped} object(s) over the limit of {MAX_OBJECTS})")
    return ParsedPrompt(objects, background, relations, ignored)


# -- layout ---------------------------------------------------------------------------------------
_CELLS = list(POSITIONS)


def layout(parsed: ParsedPrompt, rng: np.random.Generator) -> list[str]:
    """A cell for every object: named positions are kept; the others are chosen so every relation
    holds, objects share no cell and, where possible, no two are neighbours (so large objects do
    not touch), at random (``rng``) among the best assignments."""
    n = len(parsed.objects)
    fixed = [o.position for o in parsed.objects]
    free = [i for i in range(n) if fixed[i] is None]
    best: list[tuple[int, ...]] = []
    best_score: tuple[int, int, int] | None = None
    taken = {p for p in fixed if p}
    choices = [c for c in _CELLS if c not in taken] or _CELLS
    for combo in itertools.permutations(choices, len(free)) if len(choices) >= len(free) else \
            itertools.product(choices, repeat=len(free)):
        cells = list(fixed)
        for i, c in zip(free, combo):
            cells[i] = c
        broken = sum(not relation_holds(r, cells[a], cells[b]) for a, r, b in parsed.relations)
        shared = n - len(set(cells))
        near = sum(max(abs(POSITIONS[p][0] - POSITIONS[q][0]), abs(POSITIONS[p][1] - POSITIONS[q][1])) < 2
                   for p, q in itertools.combinations(cells, 2))
        score = (broken, shared, near)
        if best_score is None or score < best_score:
            best_score, best = score, [combo]
        elif score == best_score:
            best.append(combo)
    combo = best[int(rng.integers(len(best)))] if best else ()
    cells = list(fixed)
    for i, c in zip(free, combo):
        cells[i] = c
    return cells  # type: ignore[return-value]


# -- the model's own wording ----------------------------------------------------------------------
_POS_PHRASE = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
               "left": "on the left", "center": "in the center", "right": "on the right",
               "bottom left": "in the bottom left corner", "bottom": "at the bottom",
               "bottom right": "in the bottom right corner"}


def caption(o: ObjSpec, background: str | None, position: str | None = None) -> str:
    """One object in the training captions' wording, naming only what was asked:
    "a large red striped star in the top left corner on a navy background"."""
    core = " ".join(w for w in (o.size, o.color, o.style, o.shape) if w)
    pos = position or o.position
    text = f"{'an' if core[0] in 'aeiou' else 'a'} {core}" + (f" {_POS_PHRASE[pos]}" if pos else "")
    return text + (f" on a {background} background" if background else "")


@dataclass
class Region:
    caption: str
    cell: str
    size: str | None  # the asked size (None: any) — sets the region's radius


@dataclass
class PromptPlan:
    """What the model is asked for one image: ``prompt`` (its own wording; for several objects the
    whole scene, used where no region applies) and one ``Region`` per object (empty: plain)."""

    prompt: str
    regions: list[Region]
    parsed: ParsedPrompt | None
    background: str | None = None

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "regions": [r.__dict__ for r in self.regions],
                "parsed": self.parsed.as_dict() if self.parsed else None, "background": self.background}


def plan(prompt: str, seed: int) -> PromptPlan:
    """The plan for one image (``seed`` picks free cells and an unnamed background, so a seed
    repeats its image). One object: the prompt reworded; two or more: one region each, all
    naming the same background (one is chosen when the prompt names none, so regions agree)."""
    parsed = parse(prompt)
    if parsed is None:
        return PromptPlan(prompt, [], None)
    rng = np.random.default_rng([seed, 0x5eed])
    if len(parsed.objects) == 1 and not parsed.relations:
        return PromptPlan(caption(parsed.objects[0], parsed.background), [], parsed, parsed.background)
    bg = parsed.background or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    cells = layout(parsed, rng)
    regions = [Region(caption(o, bg, c), c, o.size) for o, c in zip(parsed.objects, cells)]
    whole = " and ".join(caption(o, None, c) for o, c in zip(parsed.objects, cells)) + f" on a {bg} background"
    return PromptPlan(whole, regions, parsed, bg)


def region_masks(regions: list[Region], h: int, w: int, soft: float = 0.6, margin: float = 3.0) -> np.ndarray:
    """(R, h, w) soft discs in [0, 1] around each region's cell centre on an h×w latent grid; the
    radius covers the asked size (the largest when unnamed) plus the world's position jitter."""
    ys = (np.arange(h) + 0.5) / h  # (h,)
    xs = (np.arange(w) + 0.5) / w  # (w,)
    out = np.zeros((len(regions), h, w), np.float32)
    for k, r in enumerate(regions):
        c, rw = POSITIONS[r.cell]
        cx, cy = CELL[c] / SIZE, CELL[rw] / SIZE
        rad = (SIZES[r.size or "large"] * 1.08 / 2 + margin) / SIZE  # diameter jitter 8 %, ±2 px position
        d = np.sqrt(((xs[None, :] - cx) / rad) ** 2 + ((ys[:, None] - cy) / rad) ** 2)  # (h, w) in radii
        px = rad * min(h, w)  # radius in latent pixels
        out[k] = 1.0 / (1.0 + np.exp((d - 1.0) * px / soft))
    return out
