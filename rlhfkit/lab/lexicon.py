"""Word classes of the lab grammar: the slot fillers its sentence templates draw from.

Why a separate table: the generator (`grammar.sample_review`) and the recogniser
(`grammar.sentence_is_well_formed`) are both compiled from these tuples, so the
language the lab produces and the language the gold judge accepts cannot drift apart.

Conventions:
- entries are lowercase words, or short phrases whose words are separated by one space;
- each tuple is ordered from most to least frequent: the generator samples with
  Zipf-like weights, so "great", "movie", "really" are common (a tiny LM learns them
  fast, and a reward-hacking policy has obvious favourites to over-use);
- sentiment-bearing classes come in `_pos` / `_neg` / `_neu` triples; their words were
  checked against the VADER lexicon so that the gold judge (VADER-based) agrees with the
  sentiment the grammar intends, and neutral classes avoid VADER-valenced words.
"""

FILM = ("movie", "film", "picture")

ASPECT = (
    "acting", "plot", "story", "ending", "script", "dialogue", "soundtrack", "music",
    "cinematography", "pacing", "direction", "editing", "casting", "premise", "finale",
    "opening", "climax", "lighting", "camera work", "screenplay", "atmosphere", "tone",
    "lead performance", "twist", "first act", "second half", "final scene", "costume design",
    "set design", "visual effects", "sound design", "photography", "makeup", "score",
    "chase sequence", "main character", "subplot", "middle section",
)

PERSON = (
    "director", "cast", "lead actor", "lead actress", "writer", "composer", "young star",
    "stunt team", "narrator", "producer", "editor", "ensemble", "newcomer",
    "veteran actor", "child actor", "cinematographer",
)

COMPANION = (
    "wife", "husband", "kids", "son", "daughter", "family", "parents", "brother", "sister",
    "girlfriend", "boyfriend", "roommate", "grandmother", "grandfather", "dad", "mom",
    "partner", "cousin", "uncle", "aunt", "neighbor", "coworkers", "classmates",
    "mother", "father", "children", "book club",
)

WHEN = (
    "last night", "last weekend", "on sunday", "at the cinema", "on tv", "on a plane",
    "at home", "in theaters", "on dvd", "on a long flight", "yesterday afternoon",
    "on a friday evening", "this morning", "on my birthday", "after work",
)

GENRE = (
    "a drama", "a western", "a musical", "a mystery", "a documentary", "a cartoon",
    "a sequel", "a remake", "a period piece", "a spy movie", "a science fiction film",
    "a heist movie", "a road movie", "a biopic", "an animated film", "a silent film",
    "a courtroom drama", "a sports movie", "a detective story", "a monster movie",
    "a space opera", "a family film",
)

DEGREE = (
    "really", "very", "quite", "rather", "incredibly", "genuinely", "absolutely", "fairly",
    "somewhat", "utterly", "deeply", "remarkably", "totally", "completely", "simply",
    "extremely", "mostly", "especially", "particularly",
)

EXPECTATION = ("high", "modest", "big", "mixed", "realistic", "average")

AUDIENCE = (
    "anyone", "everyone", "families", "adults", "teenagers", "film students",
    "fans of the genre", "my coworkers", "anyone with time to spare", "older viewers",
)

ADJ_POS = (
    "great", "good", "wonderful", "brilliant", "excellent", "amazing", "beautiful",
    "fantastic", "superb", "charming", "delightful", "lovely", "perfect", "fun", "funny",
    "impressive", "gorgeous", "magnificent", "outstanding", "terrific", "entertaining",
    "clever", "smart", "strong", "powerful", "stunning", "thrilling", "exciting",
    "inspiring", "remarkable", "elegant", "hilarious", "heartfelt", "enjoyable",
    "pleasant", "marvelous", "splendid", "graceful", "vibrant", "joyful", "glorious",
    "sincere", "satisfying", "engaging", "fascinating", "intelligent", "wise", "creative",
    "original", "nice", "lively", "playful", "breathtaking", "flawless", "fabulous",
    "admirable", "adorable", "classy", "romantic",
)

ADJ_NEG = (
    "bad", "boring", "terrible", "awful", "dull", "weak", "poor", "horrible", "stupid",
    "painful", "dreadful", "lame", "pathetic", "ugly", "annoying", "disappointing", "messy",
    "ridiculous", "confusing", "lazy", "unpleasant", "miserable", "awkward", "tired",
    "forced", "empty", "worthless", "useless", "dumb", "offensive", "depressing", "dreary",
    "horrid", "nasty", "lousy", "crappy", "disgusting", "irritating", "frustrating",
    "exhausting", "grim", "bitter", "trite", "idiotic", "insulting", "embarrassing",
)

ADJ_NEU = (
    "long", "short", "quiet", "simple", "typical", "unusual", "old fashioned", "familiar",
    "slow", "loud", "dark", "different", "conventional", "traditional", "straightforward",
    "subtle", "plain", "ordinary", "standard", "predictable", "talky", "busy", "quirky",
    "modern", "brief", "lengthy", "dense", "complex", "minimal", "experimental",
)

VERB_POS = ("loved", "enjoyed", "liked", "adored", "admired", "appreciated")
VERB_NEG = ("hated", "disliked", "despised", "loathed", "regretted")
VERB_NEU = ("watched", "finished", "remember", "understood", "followed", "noticed")

QUALITY_POS = (
    "a masterpiece", "a delight", "a treat", "a joy", "a pleasure", "a triumph", "a winner",
    "a success", "a real gem", "a modern classic",
)
QUALITY_NEG = (
    "a mess", "a disaster", "a failure", "a waste of time", "a disappointment", "a bore",
    "a flop", "a dud", "a bomb", "a real letdown",
)
QUALITY_NEU = (
    "a film of its time", "an unusual one", "a slow burn", "an experiment", "a long ride",
    "a period piece", "a small film", "a remake",
)

EFFECT_POS = (
    "made me smile", "made me laugh", "kept me hooked", "won me over", "left me happy",
    "kept me on the edge of my seat", "made my day", "left me wanting more",
)
EFFECT_NEG = (
    "bored me", "put me to sleep", "made me angry", "left me bored", "wasted my evening",
    "made me check my watch", "made me sad", "gave me a headache",
)
EFFECT_NEU = (
    "made me think", "kept me guessing", "stayed with me", "reminded me of my childhood",
    "took its time", "ran a bit long",
)

RECOMMEND_POS = ("highly", "definitely", "gladly", "happily", "certainly")
RECOMMEND_NEG = ("never", "not", "hardly")
RECOMMEND_NEU = ("maybe", "perhaps", "only")

SCORE_POS = ("eight", "nine", "ten")
SCORE_NEG = ("one", "two", "three", "zero")
SCORE_NEU = ("five", "six", "four", "seven")

INTERJECTION_POS = ("wow", "hooray", "bravo")
INTERJECTION_NEG = ("ugh", "yikes", "alas")

CLASSES: dict[str, tuple[str, ...]] = {
    "film": FILM,
    "aspect": ASPECT,
    "person": PERSON,
    "companion": COMPANION,
    "when": WHEN,
    "genre": GENRE,
    "degree": DEGREE,
    "expectation": EXPECTATION,
    "audience": AUDIENCE,
    "adj_pos": ADJ_POS,
    "adj_neg": ADJ_NEG,
    "adj_neu": ADJ_NEU,
    "verb_pos": VERB_POS,
    "verb_neg": VERB_NEG,
    "verb_neu": VERB_NEU,
    "quality_pos": QUALITY_POS,
    "quality_neg": QUALITY_NEG,
    "quality_neu": QUALITY_NEU,
    "effect_pos": EFFECT_POS,
    "effect_neg": EFFECT_NEG,
    "effect_neu": EFFECT_NEU,
    "recommend_pos": RECOMMEND_POS,
    "recommend_neg": RECOMMEND_NEG,
    "recommend_neu": RECOMMEND_NEU,
    "score_pos": SCORE_POS,
    "score_neg": SCORE_NEG,
    "score_neu": SCORE_NEU,
    "interjection_pos": INTERJECTION_POS,
    "interjection_neg": INTERJECTION_NEG,
}
