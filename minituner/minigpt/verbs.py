"""The verbs of the corpus: who, when and which verb, and how each verb is conjugated.

This module owns the tables the sentences are made of (subjects, tense adverbs, the 20
verbs with their complements and irregular forms: 8 irregular, the fine-tuning target,
and 12 regular, the control) and the form rules: the English regular past, third person
singular, the correct and the over-regularized past ("goed"), and Spanish conjugation.
:mod:`minituner.minigpt.corpus` combines them into sentences and splits.
"""

from __future__ import annotations

from dataclasses import dataclass

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
