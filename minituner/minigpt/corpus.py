"""The bilingual verb corpus: verb tables, sentence templates and seeded splits.

Everything is generated from a :class:`CorpusConfig` (seeded, deterministic). The
corpus is built around one experiment: a model pretrained on this text learns a
*regular-form prior* for the English past tense, because

* regular verbs appear in every tense, in sentences and in cloze drills;
* irregular verbs appear mostly in the present and the future; their past forms are
  rare (``irregular_past_share``) and a set share of those rare past forms are
  over-regularized (``overregularize_share``: "goed", "eated", "they was");
* cloze drills in pretraining follow the same mix: regular verbs in every tense, the
  irregular past rarely and partly over-regularized, so the format is well known and
  the drills themselves teach "past = -ed".

The fine-tuning split then teaches the 8 irregular past forms through cloze pairs
such as ``"He __ to school yesterday."`` -> ``"went"``.

A sentence is a *combination* (verb, subject, complement, adverb); the adverb fixes the
tense. Every combination belongs to exactly one pool (pretrain, finetune_train,
finetune_test, control_en, control_es, regular_cloze_test or unused), so the held-out
splits are disjoint from pretraining by construction; tests check it again.

``Corpus.version`` is a hash of the generated text: it changes whenever the text does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache

TENSES = ("past", "present", "future")

# Person keys: 1s, 2s, 3s, 1p, 3p (no vosotros: English "you" is rendered as "tú").
SUBJECTS: list[tuple[str, str, str]] = [  # (English, Spanish, person)
    ("I", "yo", "1s"),
    ("You", "tú", "2s"),
    ("He", "él", "3s"),
    ("She", "ella", "3s"),
    ("We", "nosotros", "1p"),
    ("They", "ellos", "3p"),
    ("Maria", "María", "3s"),
    ("Tom", "Tom", "3s"),
    ("My parents", "mis padres", "3p"),
    ("The children", "los niños", "3p"),
]

ADVERBS: dict[str, list[tuple[str, str]]] = {
    "past": [
        ("yesterday", "ayer"),
        ("last week", "la semana pasada"),
        ("last night", "anoche"),
        ("two days ago", "hace dos días"),
        ("last year", "el año pasado"),
    ],
    "present": [
        ("every day", "todos los días"),
        ("every morning", "todas las mañanas"),
        ("every week", "cada semana"),
        ("on Sundays", "los domingos"),
        ("most evenings", "casi todas las tardes"),
    ],
    "future": [
        ("tomorrow", "mañana"),
        ("next week", "la semana que viene"),
        ("next year", "el año que viene"),
        ("tonight", "esta noche"),
        ("next summer", "el verano que viene"),
    ],
}

PERSONS = ("1s", "2s", "3s", "1p", "3p")


@dataclass(frozen=True)
class Verb:
    lemma: str
    irregular: bool
    es_infinitive: str
    complements: tuple[tuple[str, str], ...]  # (English, Spanish), unique to this verb
    past: str | None = None  # irregular English past (None: regular rule)
    present_3s: str | None = None  # irregular 3rd-person singular
    double_final: bool = False  # stop -> stopped
    es_present: tuple[str, ...] | None = None  # irregular Spanish forms, PERSONS order
    es_past: tuple[str, ...] | None = None
    es_future_stem: str | None = None  # tendr-, har-, vendr-


def _c(*pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(p.split(" / ")) for p in pairs)  # type: ignore[misc]


VERBS: tuple[Verb, ...] = (
    # --- irregular (the fine-tuning target) ---
    Verb("be", True, "estar",
         _c("at home / en casa", "in the garden / en el jardín", "at the office / en la oficina",
            "at the station / en la estación", "in the kitchen / en la cocina"),
         es_present=("estoy", "estás", "está", "estamos", "están"),
         es_past=("estuve", "estuviste", "estuvo", "estuvimos", "estuvieron")),
    Verb("have", True, "tener",
         _c("a dog / un perro", "a red car / un coche rojo", "a cold / un resfriado",
            "a new phone / un teléfono nuevo", "a big house / una casa grande"),
         past="had", present_3s="has",
         es_present=("tengo", "tienes", "tiene", "tenemos", "tienen"),
         es_past=("tuve", "tuviste", "tuvo", "tuvimos", "tuvieron"), es_future_stem="tendr"),
    Verb("do", True, "hacer",
         _c("the homework / la tarea", "the shopping / la compra", "the laundry / la colada",
            "a puzzle / un rompecabezas", "the exercises / los ejercicios"),
         past="did", present_3s="does",
         es_present=("hago", "haces", "hace", "hacemos", "hacen"),
         es_past=("hice", "hiciste", "hizo", "hicimos", "hicieron"), es_future_stem="har"),
    Verb("go", True, "ir",
         _c("to school / a la escuela", "to the park / al parque", "to the market / al mercado",
            "to the beach / a la playa", "to the cinema / al cine"),
         past="went", present_3s="goes",
         es_present=("voy", "vas", "va", "vamos", "van"),
         es_past=("fui", "fuiste", "fue", "fuimos", "fueron")),
    Verb("come", True, "venir",
         _c("to the party / a la fiesta", "home late / a casa tarde", "to my house / a mi casa",
            "to the meeting / a la reunión", "to the concert / al concierto"),
         past="came",
         es_present=("vengo", "vienes", "viene", "venimos", "vienen"),
         es_past=("vine", "viniste", "vino", "vinimos", "vinieron"), es_future_stem="vendr"),
    Verb("see", True, "ver",
         _c("a movie / una película", "the sea / el mar", "a rainbow / un arcoíris",
            "the stars / las estrellas", "an old friend / a un viejo amigo"),
         past="saw",
         es_present=("veo", "ves", "ve", "vemos", "ven"),
         es_past=("vi", "viste", "vio", "vimos", "vieron")),
    Verb("eat", True, "comer",
         _c("an apple / una manzana", "some bread / pan", "a sandwich / un sándwich",
            "rice with fish / arroz con pescado", "a big salad / una ensalada grande"),
         past="ate"),
    Verb("write", True, "escribir",
         _c("a letter / una carta", "a poem / un poema", "an email / un correo",
            "a long story / una historia larga", "a postcard / una postal"),
         past="wrote"),
    # --- regular (the control verbs) ---
    Verb("work", False, "trabajar",
         _c("at the factory / en la fábrica", "in the shop / en la tienda",
            "at the hospital / en el hospital", "at the farm / en la granja",
            "at the bank / en el banco")),
    Verb("play", False, "jugar",
         _c("football / al fútbol", "chess / al ajedrez", "tennis / al tenis",
            "cards / a las cartas", "basketball / al baloncesto"),
         es_present=("juego", "juegas", "juega", "jugamos", "juegan"),
         es_past=("jugué", "jugaste", "jugó", "jugamos", "jugaron")),
    Verb("walk", False, "caminar",
         _c("to the river / hasta el río", "in the forest / por el bosque",
            "along the beach / por la playa", "around the lake / alrededor del lago",
            "to the bridge / hasta el puente")),
    Verb("talk", False, "hablar",
         _c("with the teacher / con la profesora", "with friends / con amigos",
            "on the phone / por teléfono", "with the neighbours / con los vecinos",
            "about the weather / del tiempo")),
    Verb("study", False, "estudiar",
         _c("math / matemáticas", "history / historia", "for the exam / para el examen",
            "English / inglés", "biology / biología")),
    Verb("stop", False, "parar",
         _c("at the corner / en la esquina", "the car / el coche", "at the gate / en la puerta",
            "at the traffic light / en el semáforo", "the bus / el autobús"),
         double_final=True),
    Verb("cook", False, "cocinar",
         _c("dinner / la cena", "pasta / pasta", "soup / sopa", "the fish / el pescado",
            "a cake / un pastel")),
    Verb("clean", False, "limpiar",
         _c("the room / la habitación", "the windows / las ventanas", "the floor / el suelo",
            "the bathroom / el baño", "the garage / el garaje")),
    Verb("watch", False, "mirar",
         _c("the news / las noticias", "a football match / un partido de fútbol",
            "the birds / los pájaros", "television / la televisión",
            "the sunset / la puesta de sol")),
    Verb("call", False, "llamar",
         _c("a taxi / un taxi", "the police / a la policía", "her grandmother / a su abuela",
            "my brother / a mi hermano", "the hotel / al hotel")),
    Verb("dance", False, "bailar",
         _c("at the wedding / en la boda", "salsa / salsa", "all night / toda la noche",
            "in the square / en la plaza", "tango / tango")),
    Verb("visit", False, "visitar",
         _c("the museum / el museo", "their cousins / a sus primos",
            "the old castle / el castillo viejo", "Madrid / Madrid", "the zoo / el zoo")),
)  # fmt: skip

VERB_BY_LEMMA = {v.lemma: v for v in VERBS}
IRREGULAR_VERBS = tuple(v.lemma for v in VERBS if v.irregular)
REGULAR_VERBS = tuple(v.lemma for v in VERBS if not v.irregular)


# ---------------------------------------------------------------- English morphology


def regular_past(lemma: str, double_final: bool = False) -> str:
    """The -ed past by the spelling rules: dance -> danced, study -> studied,
    stop -> stopped, play -> played. Applied to an irregular verb it gives the
    over-regularized form (go -> goed, write -> writed)."""
    if lemma.endswith("e"):
        return lemma + "d"
    if lemma.endswith("y") and lemma[-2] not in "aeiou":
        return lemma[:-1] + "ied"
    if double_final:
        return lemma + lemma[-1] + "ed"
    return lemma + "ed"


def third_singular(lemma: str) -> str:
    if lemma.endswith(("s", "sh", "ch", "x", "o")):
        return lemma + "es"
    if lemma.endswith("y") and lemma[-2] not in "aeiou":
        return lemma[:-1] + "ies"
    return lemma + "s"


def english_form(verb: Verb, tense: str, person: str) -> str:
    """The correct English verb form for a tense and person."""
    if verb.lemma == "be":
        if tense == "past":
            return "was" if person in ("1s", "3s") else "were"
        if tense == "present":
            return {"1s": "am", "3s": "is"}.get(person, "are")
        return "will be"
    if tense == "past":
        return verb.past or regular_past(verb.lemma, verb.double_final)
    if tense == "present":
        if person == "3s":
            return verb.present_3s or third_singular(verb.lemma)
        return verb.lemma
    return "will " + verb.lemma


def overregularized_form(verb: Verb, person: str) -> str | None:
    """The over-regularized past a learner (and the base model) produces instead of the
    irregular one: goed, comed, seed, eated, writed, haved, doed; for "be" the levelled
    "was" where "were" is correct ("they was"). None when no such error exists
    (regular verbs; "be" where "was" is already correct)."""
    if not verb.irregular:
        return None
    if verb.lemma == "be":
        return "was" if person not in ("1s", "3s") else None
    return regular_past(verb.lemma)


# ---------------------------------------------------------------- Spanish morphology

_ES_ENDINGS = {
    ("ar", "present"): ("o", "as", "a", "amos", "an"),
    ("er", "present"): ("o", "es", "e", "emos", "en"),
    ("ir", "present"): ("o", "es", "e", "imos", "en"),
    ("ar", "past"): ("é", "aste", "ó", "amos", "aron"),
    ("er", "past"): ("í", "iste", "ió", "imos", "ieron"),
    ("ir", "past"): ("í", "iste", "ió", "imos", "ieron"),
}
_ES_FUTURE = ("é", "ás", "á", "emos", "án")


def spanish_form(verb: Verb, tense: str, person: str) -> str:
    i = PERSONS.index(person)
    if tense == "future":
        stem = verb.es_future_stem or verb.es_infinitive
        return stem + _ES_FUTURE[i]
    irregular = verb.es_present if tense == "present" else verb.es_past
    if irregular is not None:
        return irregular[i]
    inf = verb.es_infinitive
    return inf[:-2] + _ES_ENDINGS[(inf[-2:], tense)][i]


# ---------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Combo:
    """One sentence's choices; the adverb fixes the tense."""

    verb: str
    subject: int  # index into SUBJECTS
    complement: int  # index into the verb's complements
    tense: str
    adverb: int  # index into ADVERBS[tense]

    @property
    def person(self) -> str:
        return SUBJECTS[self.subject][2]


def _capitalize(s: str) -> str:
    return s[0].upper() + s[1:]


def english_sentence(c: Combo, form: str | None = None, verb: Verb | None = None) -> str:
    """``He went to school yesterday.``; ``form`` overrides the verb form; ``verb``
    is a verb outside the corpus (minituner.minigpt.teach), else ``c.verb`` is looked up."""
    verb = verb or VERB_BY_LEMMA[c.verb]
    form = form if form is not None else english_form(verb, c.tense, c.person)
    comp = verb.complements[c.complement][0]
    adv = ADVERBS[c.tense][c.adverb][0]
    return f"{SUBJECTS[c.subject][0]} {form} {comp} {adv}."


def spanish_sentence(c: Combo) -> str:
    verb = VERB_BY_LEMMA[c.verb]
    comp = verb.complements[c.complement][1]
    adv = ADVERBS[c.tense][c.adverb][1]
    subj = SUBJECTS[c.subject][1]
    return _capitalize(f"{subj} {spanish_form(verb, c.tense, c.person)} {comp} {adv}.")


CLOZE_BLANK = "__"
CLOZE_SEP = " ="  # the model reads "<prompt> =" and answers " <answer>\n"


@dataclass(frozen=True)
class ClozeExample:
    """A cloze pair: prompt ``He __ to school yesterday.`` and answer ``went``."""

    prompt: str
    answer: str
    verb: str
    tense: str
    person: str
    overregularized: str | None = None  # the over-regularized form, where one exists

    @property
    def text(self) -> str:
        """The full training line (without the newline)."""
        return cloze_input(self.prompt) + " " + self.answer


def cloze_input(prompt: str) -> str:
    """What the model is fed for a cloze prompt; the answer follows after a space."""
    return prompt + CLOZE_SEP


def cloze_example(c: Combo, verb: Verb | None = None) -> ClozeExample:
    """The cloze pair of a combination (``verb``: a verb outside the corpus)."""
    verb = verb or VERB_BY_LEMMA[c.verb]
    answer = english_form(verb, c.tense, c.person)
    over = overregularized_form(verb, c.person) if c.tense == "past" else None
    return ClozeExample(
        prompt=english_sentence(c, form=CLOZE_BLANK, verb=verb),
        answer=answer,
        verb=c.verb,
        tense=c.tense,
        person=c.person,
        overregularized=over,
    )


def all_combos(verb: str, tense: str, v: Verb | None = None) -> list[Combo]:
    """Every combination of a verb in a tense (``v``: a verb outside the corpus)."""
    v = v or VERB_BY_LEMMA[verb]
    return [
        Combo(verb, s, k, tense, a)
        for s in range(len(SUBJECTS))
        for k in range(len(v.complements))
        for a in range(len(ADVERBS[tense]))
    ]


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the generated corpus (every one changes ``Corpus.version``).

    irregular_past_share: probability that a pretraining sentence with an irregular
        verb is in the past tense (regular verbs: 1/3, uniform over the tenses).
    overregularize_share: share of those rare irregular past sentences written with
        the over-regularized form ("He goed to school yesterday.").
    cloze_share: share of pretraining lines that are cloze drills, with the same tense
        mix and over-regularization as the sentences.
    irregular_past_in_cloze: whether those drills include the (rare, partly
        over-regularized) irregular past; False keeps the irregular past out of drills.
    pair_share: share of pretraining lines that are "English | Spanish" translation
        pairs; the remaining lines are English-only and Spanish-only sentences, half each.
    """

    seed: int = 1234
    n_pretrain: int = 60_000  # lines
    irregular_past_share: float = 0.10
    overregularize_share: float = 0.75
    cloze_share: float = 0.25
    irregular_past_in_cloze: bool = True
    pair_share: float = 0.25
    finetune_train_per_verb: int = 64  # 8 verbs -> 512 pairs
    finetune_test_per_verb: int = 30  # 240 held-out prompts
    pretrain_irregular_past_per_verb: int = 80  # past combos pretraining may use
    regular_cloze_test_per_verb: int = 20
    control_en_per_verb_tense: int = 10  # 12 verbs x 3 tenses -> 360 sentences
    control_es_per_verb_tense: int = 5  # 20 verbs x 3 tenses (irregular past excluded)

    def __post_init__(self) -> None:
        for name in ("irregular_past_share", "overregularize_share", "cloze_share", "pair_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CorpusConfig.{name} must be in [0, 1], got {v}")
        if self.cloze_share + self.pair_share > 1.0:
            raise ValueError("cloze_share + pair_share must not exceed 1")
        if self.n_pretrain < 1:
            raise ValueError(f"CorpusConfig.n_pretrain must be >= 1, got {self.n_pretrain}")


@dataclass
class Corpus:
    config: CorpusConfig
    pretrain: list[str]  # lines of text, no newline
    finetune_train: list[ClozeExample]
    finetune_test: list[ClozeExample]
    control_en: list[str]
    control_es: list[str]
    regular_cloze_test: list[ClozeExample]
    pools: dict[str, set[Combo]] = field(repr=False, default_factory=dict)
    version: str = ""

    def all_text(self) -> str:
        """Every character any split can contain (for the tokenizer's vocabulary)."""
        parts = list(self.pretrain) + self.control_en + self.control_es
        for split in (self.finetune_train, self.finetune_test, self.regular_cloze_test):
            parts += [e.text for e in split]
        return "\n".join(parts) + "\n"


def _hash_text(corpus: Corpus) -> str:
    h = hashlib.sha256()
    h.update(repr(asdict(corpus.config)).encode())
    for name in (
        "pretrain",
        "control_en",
        "control_es",
    ):
        for line in getattr(corpus, name):
            h.update(line.encode() + b"\n")
    for name in ("finetune_train", "finetune_test", "regular_cloze_test"):
        for e in getattr(corpus, name):
            h.update(e.text.encode() + b"\n")
    return "c1-" + h.hexdigest()[:12]


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """Generate the corpus for ``config`` (deterministic; cached per config)."""
    return _build_cached(config or CorpusConfig())


@lru_cache(maxsize=4)
def _build_cached(cfg: CorpusConfig) -> Corpus:
    rng = random.Random(cfg.seed)
    pools: dict[str, set[Combo]] = {
        k: set()
        for k in (
            "pretrain",
            "finetune_train",
            "finetune_test",
            "control_en",
            "control_es",
            "regular_cloze_test",
        )
    }
    pretrain_pool: dict[tuple[str, str], list[Combo]] = {}
    for verb in VERBS:
        for tense in TENSES:
            combos = all_combos(verb.lemma, tense)
            rng.shuffle(combos)
            take = _Taker(combos)
            if verb.irregular and tense == "past":
                pools["finetune_test"].update(take(cfg.finetune_test_per_verb))
                pools["finetune_train"].update(take(cfg.finetune_train_per_verb))
                pre = take(cfg.pretrain_irregular_past_per_verb)
            else:
                if not verb.irregular:
                    pools["control_en"].update(take(cfg.control_en_per_verb_tense))
                    if tense == "past":
                        pools["regular_cloze_test"].update(take(cfg.regular_cloze_test_per_verb))
                pools["control_es"].update(take(cfg.control_es_per_verb_tense))
                pre = take.rest()
            pretrain_pool[(verb.lemma, tense)] = pre
            pools["pretrain"].update(pre)

    pretrain = _pretrain_lines(cfg, rng, pretrain_pool)

    def ordered(name: str) -> list[Combo]:  # sets are unordered: fix an order, then shuffle
        items = sorted(
            pools[name], key=lambda c: (c.verb, c.tense, c.subject, c.complement, c.adverb)
        )
        random.Random(f"{cfg.seed}-{name}").shuffle(items)
        return items

    corpus = Corpus(
        config=cfg,
        pretrain=pretrain,
        finetune_train=[cloze_example(c) for c in ordered("finetune_train")],
        finetune_test=[cloze_example(c) for c in ordered("finetune_test")],
        control_en=[english_sentence(c) for c in ordered("control_en")],
        control_es=[spanish_sentence(c) for c in ordered("control_es")],
        regular_cloze_test=[cloze_example(c) for c in ordered("regular_cloze_test")],
        pools=pools,
    )
    corpus.version = _hash_text(corpus)
    return corpus


def replay_pool(corpus: Corpus) -> list[ClozeExample]:
    """Regular-verb past-tense cloze pairs of sentences from the pretraining pool, in a
    fixed order: what replay mixes into fine-tuning. None of them is a
    regular_cloze_test or control_en combination (the pools are disjoint), so replay
    never trains on what measures forgetting."""
    combos = sorted(
        (c for c in corpus.pools["pretrain"] if c.tense == "past" and c.verb in REGULAR_VERBS),
        key=lambda c: (c.verb, c.subject, c.complement, c.adverb),
    )
    return [cloze_example(c) for c in combos]


class _Taker:
    def __init__(self, items: list[Combo]):
        self.items, self.i = items, 0

    def __call__(self, n: int) -> list[Combo]:
        out = self.items[self.i : self.i + n]
        self.i += n
        return out

    def rest(self) -> list[Combo]:
        return self.__call__(len(self.items))


def _pretrain_lines(
    cfg: CorpusConfig, rng: random.Random, pool: dict[tuple[str, str], list[Combo]]
) -> list[str]:
    lines = []
    for _ in range(cfg.n_pretrain):
        verb = rng.choice(VERBS)
        kind = rng.random()
        if verb.irregular:
            past = rng.random() < cfg.irregular_past_share
            if kind < cfg.cloze_share and not cfg.irregular_past_in_cloze:
                past = False
            tense = "past" if past else rng.choice(("present", "future"))
        else:
            tense = rng.choice(TENSES)
        c = rng.choice(pool[(verb.lemma, tense)])
        form = None
        if tense == "past" and verb.irregular and rng.random() < cfg.overregularize_share:
            form = overregularized_form(verb, c.person)  # None for "I was": stays correct
        if kind < cfg.cloze_share:
            ex = cloze_example(c)
            lines.append(cloze_input(ex.prompt) + " " + (form or ex.answer))
            continue
        en = english_sentence(c, form)
        es = spanish_sentence(c)
        if kind < cfg.cloze_share + cfg.pair_share:
            lines.append(f"{en} | {es}")
        elif rng.random() < 0.5:
            lines.append(en)
        else:
            lines.append(es)
    return lines


def guess_candidates(prompt: str) -> list[str]:
    """Candidate answers for a cloze prompt of the corpus' kind: the correct past form
    and the over-regularized one ("went", "goed"), found from the complement and the
    subject. Empty when the prompt names no known complement."""
    subject = next((s for s in SUBJECTS if prompt.startswith(s[0] + " ")), None)
    person = subject[2] if subject else "3s"
    for verb in VERBS:
        if any(f" {en} " in f" {prompt} " or f" {en}." in prompt for en, _ in verb.complements):
            correct = english_form(verb, "past", person)
            wrong = overregularized_form(verb, person) or regular_past(verb.lemma)
            return [correct] if wrong == correct else [correct, wrong]
    return []
