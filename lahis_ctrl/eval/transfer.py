"""Attention transfer: the paper's "Alice occupation" probe.

A prompt states Alice's occupation twice, as occupation X in language 1 and as a different occupation Y in
language 2, then asks in English:

    Alices Beruf ist Lehrerin. La profesión de Alice es panadera.
    Question: What is Alice's occupation?
    Answer: Alice's occupation is

Scaling language-1-specific heads up (x3), or zeroing language-2-specific heads, should move the answer
toward X. The caller builds those interventions (HeadMasks); `alice_probe` measures each of them:
  * teacher-forced: log P(" " + X_en | prompt) - log P(" " + Y_en | prompt) (sums of the continuation's
    token log-probs), averaged over items, and the share of items where it is > 0;
  * generated: a greedy continuation and which occupation it names (X, Y, neither or both), matching the
    English word and the words of both languages.

Every ordered pair (X, Y), X != Y, is an item, so each occupation is X as often as Y: a word that is
a priori more likely (fewer tokens, more frequent) raises as many items' log-odds as it lowers and the
mean log-odds of the unmodified model is not biased toward either side by the choice of words.
order="both" (the default) also puts each pair in both statement orders, to balance position bias.

The name stays "Alice" in Latin script in every language (no transliteration): the English question
names "Alice", and the same name string in both statements keeps the two facts about the same person.
Occupation words are the feminine forms where a language marks gender (Alice is a woman's name); the
answer matcher also knows the masculine / common alternatives.
"""

from __future__ import annotations

import contextlib
import random
from typing import Mapping, Optional, Sequence

import torch

from ..core.errors import LahisError, MaskMismatchError
from ..core.lm import continuation_logprobs  # noqa: F401  (the probe's teacher-forced scores)

# --------------------------------------------------------------------------------------------- data

LANGUAGES = ("en", "de", "es", "fr", "hi", "ru", "zh", "vi", "ar", "el", "tr", "th", "ro")

# The word used in the statement, per occupation (English key) and language.
OCCUPATIONS: dict[str, dict[str, str]] = {
    "teacher": {"en": "teacher", "de": "Lehrerin", "es": "profesora", "fr": "enseignante", "hi": "शिक्षिका",
                "ru": "учительница", "zh": "教师", "vi": "giáo viên", "ar": "معلمة", "el": "δασκάλα",
                "tr": "öğretmen", "th": "ครู", "ro": "profesoară"},
    "doctor": {"en": "doctor", "de": "Ärztin", "es": "médica", "fr": "médecin", "hi": "डॉक्टर", "ru": "врач",
               "zh": "医生", "vi": "bác sĩ", "ar": "طبيبة", "el": "γιατρός", "tr": "doktor", "th": "แพทย์",
               "ro": "medic"},
    "farmer": {"en": "farmer", "de": "Bäuerin", "es": "agricultora", "fr": "agricultrice", "hi": "किसान",
               "ru": "фермер", "zh": "农民", "vi": "nông dân", "ar": "مزارعة", "el": "αγρότισσα", "tr": "çiftçi",
               "th": "เกษตรกร", "ro": "fermieră"},
    "lawyer": {"en": "lawyer", "de": "Anwältin", "es": "abogada", "fr": "avocate", "hi": "वकील", "ru": "юрист",
               "zh": "律师", "vi": "luật sư", "ar": "محامية", "el": "δικηγόρος", "tr": "avukat", "th": "ทนายความ",
               "ro": "avocată"},
    "baker": {"en": "baker", "de": "Bäckerin", "es": "panadera", "fr": "boulangère", "hi": "बेकर", "ru": "пекарь",
              "zh": "面包师", "vi": "thợ làm bánh", "ar": "خبازة", "el": "αρτοποιός", "tr": "fırıncı",
              "th": "คนทำขนมปัง", "ro": "brutăreasă"},
    "pilot": {"en": "pilot", "de": "Pilotin", "es": "piloto", "fr": "pilote", "hi": "पायलट", "ru": "пилот",
              "zh": "飞行员", "vi": "phi công", "ar": "طيارة", "el": "πιλότος", "tr": "pilot", "th": "นักบิน",
              "ro": "pilot"},
    "nurse": {"en": "nurse", "de": "Krankenschwester", "es": "enfermera", "fr": "infirmière", "hi": "नर्स",
              "ru": "медсестра", "zh": "护士", "vi": "y tá", "ar": "ممرضة", "el": "νοσηλεύτρια", "tr": "hemşire",
              "th": "พยาบาล", "ro": "infirmieră"},
    "engineer": {"en": "engineer", "de": "Ingenieurin", "es": "ingeniera", "fr": "ingénieure", "hi": "इंजीनियर",
                 "ru": "инженер", "zh": "工程师", "vi": "kỹ sư", "ar": "مهندسة", "el": "μηχανικός", "tr": "mühendis",
                 "th": "วิศวกร", "ro": "inginer"},
    "singer": {"en": "singer", "de": "Sängerin", "es": "cantante", "fr": "chanteuse", "hi": "गायिका",
               "ru": "певица", "zh": "歌手", "vi": "ca sĩ", "ar": "مغنية", "el": "τραγουδίστρια", "tr": "şarkıcı",
               "th": "นักร้อง", "ro": "cântăreață"},
    "police officer": {"en": "police officer", "de": "Polizistin", "es": "policía", "fr": "policière",
                       "hi": "पुलिस अधिकारी", "ru": "полицейский", "zh": "警察", "vi": "cảnh sát", "ar": "شرطية",
                       "el": "αστυνομικός", "tr": "polis memuru", "th": "ตำรวจ", "ro": "polițistă"},
}

# Other forms a generation may use (masculine forms, synonyms); only used to recognise answers.
ALTERNATE_FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "teacher": {"de": ("Lehrer",), "es": ("profesor", "maestra", "maestro"), "fr": ("enseignant", "professeur"),
                "hi": ("शिक्षक", "अध्यापिका", "अध्यापक"), "ru": ("учитель",), "zh": ("老师",), "ar": ("معلم",),
                "el": ("δάσκαλος", "εκπαιδευτικός"), "ro": ("profesor",)},
    "doctor": {"en": ("physician",), "de": ("Arzt",), "es": ("médico", "doctora"), "fr": ("docteur",),
               "hi": ("चिकित्सक",), "ru": ("доктор",), "zh": ("大夫",), "ar": ("طبيب",), "th": ("หมอ",),
               "ro": ("doctor", "doctoriță")},
    "farmer": {"de": ("Bauer", "Landwirtin", "Landwirt"), "es": ("agricultor", "granjera", "granjero"),
               "fr": ("agriculteur", "fermière", "fermier"), "ru": ("фермерша",), "ar": ("مزارع", "فلاح"),
               "el": ("αγρότης",), "th": ("ชาวนา",), "ro": ("fermier", "agricultor")},
    "lawyer": {"en": ("attorney",), "de": ("Anwalt", "Rechtsanwältin", "Rechtsanwalt"), "es": ("abogado",),
               "fr": ("avocat",), "ru": ("адвокат",), "ar": ("محامي", "محام"), "th": ("ทนาย",), "ro": ("avocat",)},
    "baker": {"de": ("Bäcker",), "es": ("panadero",), "fr": ("boulanger",), "ar": ("خباز",),
              "el": ("φούρναρης",), "ro": ("brutar",)},
    "pilot": {"ru": ("лётчица", "летчица", "лётчик", "летчик"), "ar": ("طيار",), "el": ("πιλότο",)},
    "nurse": {"de": ("Krankenpflegerin", "Krankenpfleger", "Pflegerin"), "es": ("enfermero",), "fr": ("infirmier",),
              "ru": ("медбрат",), "ar": ("ممرض",), "el": ("νοσοκόμα", "νοσηλευτής"), "ro": ("infirmier",)},
    "engineer": {"de": ("Ingenieur",), "es": ("ingeniero",), "fr": ("ingénieur",), "ar": ("مهندس",),
                 "ro": ("ingineră",)},
    "singer": {"de": ("Sänger",), "fr": ("chanteur",), "hi": ("गायक",), "ru": ("певец",), "zh": ("歌唱家",),
               "ar": ("مغني", "مطربة"), "el": ("τραγουδιστής",), "ro": ("cântăreț", "cântăreaţă")},
    "police officer": {"en": ("policewoman", "policeman", "police"), "de": ("Polizist",), "fr": ("policier",),
                       "hi": ("पुलिसकर्मी", "पुलिस"), "ru": ("полицейская", "полиция"), "ar": ("شرطي", "شرطة"),
                       "tr": ("polis",), "ro": ("polițist", "poliţistă")},
}

# "Alice's occupation is {occupation}." in each language (Thai writes no final period).
STATEMENT_TEMPLATES: dict[str, str] = {
    "en": "Alice's occupation is {occupation}.",
    "de": "Alices Beruf ist {occupation}.",
    "es": "La profesión de Alice es {occupation}.",
    "fr": "La profession d'Alice est {occupation}.",
    "hi": "Alice का पेशा {occupation} है।",
    "ru": "Профессия Alice — {occupation}.",
    "zh": "Alice的职业是{occupation}。",
    "vi": "Nghề nghiệp của Alice là {occupation}.",
    "ar": "مهنة Alice هي {occupation}.",
    "el": "Το επάγγελμα της Alice είναι {occupation}.",
    "tr": "Alice'in mesleği {occupation}.",
    "th": "อาชีพของ Alice คือ{occupation}",
    "ro": "Ocupația lui Alice este {occupation}.",
}

QUESTION = "Question: What is Alice's occupation?\nAnswer: Alice's occupation is"

# Scripts without spaces between words, or with clitics glued to nouns (Arabic "ال..."): a form counts
# wherever it occurs. Elsewhere it must start a word (so "medic" does not match "paramedic"), but may be
# followed by an inflection ("öğretmendir", "Lehrerinnen"); the data test checks that no word of one
# occupation starts a word of another.
_SUBSTRING_LANGS = frozenset({"zh", "th", "ar"})
ORDERS = ("lang1_first", "lang2_first", "both")


def _check_lang(lang: str, role: str) -> None:
    if lang not in STATEMENT_TEMPLATES:
        raise LahisError(f"{role} '{lang}' is not supported by the Alice probe; "
                         f"use one of: {', '.join(LANGUAGES)}")


def statement(lang: str, occupation: str) -> str:
    """"Alice's occupation is <occupation in lang>." in `lang` (`occupation` is an OCCUPATIONS key)."""
    _check_lang(lang, "language")
    if occupation not in OCCUPATIONS:
        raise LahisError(f"unknown occupation '{occupation}'; use one of: {', '.join(OCCUPATIONS)}")
    return STATEMENT_TEMPLATES[lang].format(occupation=OCCUPATIONS[occupation][lang])


def occupation_forms(occupation: str, langs: Sequence[str]) -> list[tuple[str, str]]:
    """(lang, form) of every word for `occupation` in English and in `langs`, deduplicated."""
    out: list[tuple[str, str]] = []
    for lang in dict.fromkeys(["en", *langs]):
        for form in (OCCUPATIONS[occupation][lang], *ALTERNATE_FORMS.get(occupation, {}).get(lang, ())):
            if (lang, form) not in out:
                out.append((lang, form))
    return out


def _occurs(form: str, lang: str, text: str) -> bool:
    """Case-insensitive occurrence of `form` in `text`, starting a word unless `lang` is a substring language."""
    form, text = form.casefold(), text.casefold()
    start = text.find(form)
    while start >= 0:
        if lang in _SUBSTRING_LANGS or start == 0 or not text[start - 1].isalnum():
            return True
        start = text.find(form, start + 1)
    return False


def names_occupation(text: str, occupation: str, langs: Sequence[str]) -> bool:
    """Whether `text` names `occupation` in English or in one of `langs`."""
    return any(_occurs(form, lang, text) for lang, form in occupation_forms(occupation, langs))


def classify_answer(generation: str, x: str, y: str, lang1: str, lang2: str) -> str:
    """"x" if the generation names X (in English, lang1 or lang2) and not Y, "y" conversely, else "both"/"neither"."""
    langs = (lang1, lang2)
    has_x, has_y = names_occupation(generation, x, langs), names_occupation(generation, y, langs)
    return {(True, False): "x", (False, True): "y", (True, True): "both"}.get((has_x, has_y), "neither")


# --------------------------------------------------------------------------------------------- items


def probe_items(lang1: str, lang2: str, n: Optional[int] = None, seed: int = 0, order: str = "both") -> list[dict]:
    """Probe items for every ordered occupation pair (X, Y), X != Y: X stated in lang1, Y in lang2.

    order: "lang1_first" (lang1's statement first), "lang2_first", or "both" (each pair twice, once per
    order, next to each other so that capping at an even `n` stays balanced). Pairs are shuffled with
    `seed`; `n` caps the number of items. Each item: {"id", "prompt", "order", "x", "y" (English
    occupation names, the OCCUPATIONS keys), "x_en", "y_en" (the English words scored), "x_word" (X in
    lang1), "y_word" (Y in lang2)}.
    """
    _check_lang(lang1, "lang1")
    _check_lang(lang2, "lang2")
    if lang1 == lang2:
        raise LahisError(f"lang1 and lang2 are both '{lang1}'; the probe needs two different languages")
    if order not in ORDERS:
        raise LahisError(f"order must be one of {', '.join(ORDERS)}; got '{order}'")
    if n is not None and int(n) < 1:
        raise LahisError(f"n must be a positive number of items (or None for all); got {n}")
    pairs = [(x, y) for x in OCCUPATIONS for y in OCCUPATIONS if x != y]
    random.Random(seed).shuffle(pairs)
    orders = ("lang1_first", "lang2_first") if order == "both" else (order,)
    items = []
    for x, y in pairs:
        s1, s2 = statement(lang1, x), statement(lang2, y)
        for o in orders:
            first, second = (s1, s2) if o == "lang1_first" else (s2, s1)
            items.append({"id": f"{lang1}:{x}|{lang2}:{y}|{o}", "prompt": f"{first} {second}\n{QUESTION}",
                          "order": o, "x": x, "y": y, "x_en": OCCUPATIONS[x]["en"], "y_en": OCCUPATIONS[y]["en"],
                          "x_word": OCCUPATIONS[x][lang1], "y_word": OCCUPATIONS[y][lang2]})
    return items[:int(n)] if n is not None else items


# --------------------------------------------------------------------------------------------- probe


def _validated(model, interventions: Mapping[str, object]) -> dict:
    from ..core.architecture import describe
    from ..core.mask import as_mask

    if not interventions:
        raise LahisError("no interventions given: pass e.g. {'original': None, 'lang1 x3': mask}")
    spec = describe(model)
    masks = {}
    for name, mask in interventions.items():
        if mask is None:
            masks[name] = None
            continue
        try:
            masks[name] = as_mask(mask, spec)
        except MaskMismatchError as exc:
            raise MaskMismatchError(f"intervention '{name}': {exc}") from exc
        except TypeError as exc:
            raise LahisError(f"intervention '{name}' must be a HeadMask, a mask file or None: {exc}") from exc
    return masks


def _share(values: Sequence[bool]) -> float:
    return sum(bool(v) for v in values) / len(values) if values else float("nan")


def _summary(log_odds: Sequence[float], answers: Sequence[str], seed: int = 0) -> dict:
    from .stats import bootstrap_mean_ci, wilson_interval

    n = len(log_odds)
    prefers = sum(lo > 0 for lo in log_odds)
    mean_ci = list(bootstrap_mean_ci(log_odds, seed=seed)[1:]) if n else [float("nan")] * 2
    return {"n": n, "mean_log_odds": sum(log_odds) / n if n else float("nan"), "mean_log_odds_ci": mean_ci,
            "share_prefers_x": prefers / n if n else float("nan"),
            "share_prefers_x_ci": list(wilson_interval(prefers, n)),
            **{f"share_answer_{k}": _share([a == k for a in answers]) for k in ("x", "y", "neither", "both")}}


def shifts(result: Mapping, baseline: str = "none", seed: int = 0) -> dict[str, dict]:
    """Each intervention's shift of the per-item log-odds (X vs Y) against `baseline`, paired over the items:
    {name: Comparison dict} (paired bootstrap CI, sign-flip p)."""
    from .stats import paired_difference

    base = [p["log_odds"] for p in result["results"][baseline]["per_item"]]
    return {name: paired_difference(base, [p["log_odds"] for p in r["per_item"]], seed=seed, unit="log-odds").to_dict()
            for name, r in result["results"].items() if name != baseline}


def alice_probe(model, tokenizer, lang1: str, lang2: str, interventions: Mapping[str, object],
                n: Optional[int] = None, seed: int = 0, order: str = "both", batch_size: int = 8,
                max_new_tokens: int = 8, progress: bool = False) -> dict:
    """Measure how each intervention moves the Alice probe's answer toward X (stated in lang1).

    interventions: {name: HeadMask, mask file, or None (= the original model)}, all validated against
    the model before anything runs. Returns a JSON-able dict:
      {"lang1", "lang2", "order", "seed", "max_new_tokens", "n_items", "question", "items": [probe_items],
       "results": {name: {"mask": {"changed_heads": [[layer, head]], "scales": [float], "method"} or None,
                          "n", "mean_log_odds", "share_prefers_x", "share_answer_x", "share_answer_y",
                          "share_answer_neither", "share_answer_both",
                          "by_order": {order: {the same summary keys}},
                          "per_item": [{"id", "logp_x", "logp_y", "log_odds", "prefers_x", "answer",
                                        "generation"}]}}}
    log_odds = log P(" " + X_en | prompt) - log P(" " + Y_en | prompt), natural log; answer is "x", "y",
    "both" or "neither" (which occupations the greedy continuation names, in English, lang1 or lang2).
    `probe_log_odds` scores many interventions (random head sets) teacher-forced only, in one batched pass.
    """
    from ..core.control import apply_head_mask
    from ..core.lm import greedy_generate

    items = probe_items(lang1, lang2, n=n, seed=seed, order=order)
    masks = _validated(model, interventions)
    if max_new_tokens < 1:
        raise LahisError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    prompts = [it["prompt"] for it in items]
    score_prompts = prompts + prompts
    continuations = [" " + it["x_en"] for it in items] + [" " + it["y_en"] for it in items]
    result = {"lang1": lang1, "lang2": lang2, "order": order, "seed": seed, "max_new_tokens": max_new_tokens,
              "n_items": len(items), "question": QUESTION, "items": items, "results": {}}
    for name, mask in masks.items():
        ctx = apply_head_mask(model, mask) if mask is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            lps = continuation_logprobs(model, tokenizer, score_prompts, continuations, batch_size=batch_size,
                                        progress=progress, desc=f"alice {name}: score")
            gens = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   progress=progress)
        per_item = []
        for k, it in enumerate(items):
            lpx, lpy = lps[k], lps[len(items) + k]
            per_item.append({"id": it["id"], "logp_x": lpx, "logp_y": lpy, "log_odds": lpx - lpy,
                             "prefers_x": lpx - lpy > 0, "generation": gens[k],
                             "answer": classify_answer(gens[k], it["x"], it["y"], lang1, lang2)})
        entry = {"mask": None if mask is None else {
            "changed_heads": [list(h) for h in mask.changed_heads()],
            "scales": [float(mask.values[l, h]) for l, h in mask.changed_heads()], "method": mask.method}}
        entry.update(_summary([p["log_odds"] for p in per_item], [p["answer"] for p in per_item], seed))
        entry["by_order"] = {o: _summary([p["log_odds"] for p, it in zip(per_item, items) if it["order"] == o],
                                         [p["answer"] for p, it in zip(per_item, items) if it["order"] == o])
                             for o in dict.fromkeys(it["order"] for it in items)}
        entry["per_item"] = per_item
        result["results"][name] = entry
    if "none" in result["results"]:
        result["shifts"] = shifts(result, "none", seed)
    return result


def probe_log_odds(model, tokenizer, lang1: str, lang2: str, interventions: Mapping[str, object],
                   n: Optional[int] = None, seed: int = 0, order: str = "both", batch_size: int = 8,
                   progress: bool = False) -> dict:
    """The teacher-forced half of `alice_probe` for many interventions at once (e.g. random head sets): every
    intervention's items go through one batched pass, each row under its own mask (exactly the mask's own log-odds).
    Returns {"results": {name: {"mask", "n", "mean_log_odds", "per_item": [{"id", "logp_x", "logp_y",
    "log_odds", "prefers_x"}]}}} in alice_probe's format, without generations."""
    items = probe_items(lang1, lang2, n=n, seed=seed, order=order)
    masks = _validated(model, interventions)
    from ..core.architecture import describe

    shape = describe(model).shape
    names = list(masks)
    prompts = [it["prompt"] for it in items]
    conts = [" " + it["x_en"] for it in items] + [" " + it["y_en"] for it in items]
    scales = torch.stack([torch.ones(shape) if masks[name] is None else masks[name].values.float() for name in names])
    k = len(items)
    lps = continuation_logprobs(model, tokenizer, (prompts * 2) * len(names), conts * len(names), batch_size=batch_size,
                                progress=progress, desc="alice (teacher-forced)",
                                head_scales=scales.repeat_interleave(2 * k, dim=0))  # [interventions * 2 * items]
    out = {}
    for j, name in enumerate(names):
        base = j * 2 * k
        per_item = [{"id": it["id"], "logp_x": lps[base + i], "logp_y": lps[base + k + i],
                     "log_odds": lps[base + i] - lps[base + k + i], "prefers_x": lps[base + i] > lps[base + k + i]}
                    for i, it in enumerate(items)]
        mask = masks[name]
        out[name] = {"mask": None if mask is None else {"changed_heads": [list(h) for h in mask.changed_heads()],
                                                         "scales": [float(mask.values[l, h])
                                                                    for l, h in mask.changed_heads()],
                                                         "method": mask.method},
                     "n": k, "mean_log_odds": sum(p["log_odds"] for p in per_item) / k if k else float("nan"),
                     "per_item": per_item}
    return {"lang1": lang1, "lang2": lang2, "order": order, "seed": seed, "n_items": k, "results": out}


def format_probe_table(result: Mapping) -> str:
    """Markdown table, one row per intervention: mean log-odds (X vs Y) with a 95% CI, its paired shift against
    no intervention (CI, p), the share preferring X with a Wilson CI, and the greedy answers."""
    from .stats import format_effect

    lang1, lang2 = result["lang1"], result["lang2"]
    lines = [f"### Alice probe: X in {lang1}, Y in {lang2} ({result['n_items']} items, order {result['order']})", "",
             "| intervention | heads changed | mean log-odds (X vs Y) [95% CI] | shift vs none [95% CI], p "
             "| prefers X % [95% CI] | answer X % | answer Y % | answer neither % |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    shift = result.get("shifts", {})
    for name, r in result["results"].items():
        changed = len(r["mask"]["changed_heads"]) if r.get("mask") else 0
        lo_ci = r.get("mean_log_odds_ci") or [float("nan")] * 2
        px_ci = r.get("share_prefers_x_ci") or [float("nan")] * 2
        lines.append(f"| {name} | {changed} | {r['mean_log_odds']:+.3f} [{lo_ci[0]:+.2f}, {lo_ci[1]:+.2f}] "
                     f"| {format_effect(shift[name]) if name in shift else ''} "
                     f"| {100 * r['share_prefers_x']:.1f} [{100 * px_ci[0]:.0f}, {100 * px_ci[1]:.0f}] "
                     f"| {100 * r['share_answer_x']:.1f} | {100 * r['share_answer_y']:.1f} "
                     f"| {100 * r['share_answer_neither']:.1f} |")
    return "\n".join(lines)
