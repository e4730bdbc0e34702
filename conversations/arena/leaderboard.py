"""The leaderboard: every model and model + adapter, rated from the verdicts of people who
saw two of their answers to the same question (see ratings.py for the method).

The games are the `Preference` rows of side-by-side comparisons and of arena votes: their
two answers carry the model and adapter names that wrote them. A "chosen" verdict is a
win for the chosen answer's contender; "tie" and "both bad" are both a tie (half a win
each), as in LMSYS' Chatbot Arena: both say neither answer was better. Sibling
preferences (regenerated answers, usually of one model) are not games between contenders;
neither is a pair of answers from the same contender. Deleted conversations take their
games with them.
"""

from conversations.arena import ratings
from conversations.models import Preference, Verdict

SOURCES = (Preference.Source.COMPARISON, Preference.Source.ARENA)


def contender(model_name, adapter_name):
    return f"{model_name} + {adapter_name}" if adapter_name else model_name


def games():
    """(chosen or left contender, rejected or right contender, score of the first) per verdict."""
    rows = (
        Preference.objects.filter(source__in=SOURCES)
        .order_by("pk")
        .values_list(
            "verdict", "chosen__model_name", "chosen__adapter_name", "rejected__model_name", "rejected__adapter_name"
        )
    )
    for verdict, chosen_model, chosen_adapter, rejected_model, rejected_adapter in rows:
        first, second = contender(chosen_model, chosen_adapter), contender(rejected_model, rejected_adapter)
        if first and second and first != second:
            yield first, second, 1.0 if verdict == Verdict.CHOSEN else 0.5


def leaderboard(resamples=100, seed=0):
    """Ratings of every contender, best first, with a seeded bootstrap 95% interval."""
    return ratings.table(games(), resamples=resamples, seed=seed)
