"""Agreement between reviewers on the items of the data (the review queue's overlap): Cohen's kappa for a pair
of reviewers on the items both decided, Fleiss' kappa for every item decided by the same number of
reviewers. Plain Python: tests/review/test_review.py checks both against scikit-learn and statsmodels on fixed
labels. `agreement_report` is what every dataset card records and the admin's agreement page shows.

    kappa = (observed agreement - agreement expected by chance) / (1 - agreement expected by chance)

None where it is undefined: no shared items, or chance agreement of 1 (every label the same).
"""

from collections import Counter
from itertools import combinations

from conversations.models import Review


def cohen_kappa(first, second):
    """Cohen's kappa of two raters' labels on the same items (two equal-length sequences)."""
    if len(first) != len(second):
        raise ValueError("both raters must label the same items")
    count = len(first)
    if not count:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / count
    left, right = Counter(first), Counter(second)
    expected = sum(left[label] * right[label] for label in left) / count**2
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(table):
    """Fleiss' kappa of a table: one row per item, one column per label, each cell how many raters gave
    that label to that item; every row sums to the same number of raters (at least 2)."""
    if not table:
        return None
    raters = sum(table[0])
    if raters < 2 or any(sum(row) != raters for row in table):
        raise ValueError("every item needs the same number of raters, at least 2")
    items = len(table)
    per_item = [(sum(cell * cell for cell in row) - raters) / (raters * (raters - 1)) for row in table]
    observed = sum(per_item) / items
    shares = [sum(row[column] for row in table) / (items * raters) for column in range(len(table[0]))]
    expected = sum(share * share for share in shares)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def pairwise(decisions):
    """`decisions`: {item: {reviewer: label}}. [(reviewer a, reviewer b, shared items, observed agreement,
    Cohen's kappa)] for every pair of reviewers who decided at least one item in common."""
    reviewers = sorted({reviewer for labels in decisions.values() for reviewer in labels})
    pairs = []
    for a, b in combinations(reviewers, 2):
        shared = [labels for labels in decisions.values() if a in labels and b in labels]
        if shared:
            first, second = [labels[a] for labels in shared], [labels[b] for labels in shared]
            agreed = sum(x == y for x, y in zip(first, second)) / len(shared)
            pairs.append((a, b, len(shared), agreed, cohen_kappa(first, second)))
    return pairs


def overall(decisions, labels):
    """Fleiss' kappa over the items decided by the most common number of reviewers (at least 2), and how
    many items that is: (kappa or None, items)."""
    sizes = Counter(len(given) for given in decisions.values() if len(given) >= 2)
    if not sizes:
        return None, 0
    raters = sizes.most_common(1)[0][0]
    table = [
        [list(given.values()).count(label) for label in labels] for given in decisions.values() if len(given) == raters
    ]
    return fleiss_kappa(table), len(table)


def decisions(feedback_ids=None):
    """{feedback id: {reviewer username: decision}} of decided reviews (of these items, if given)."""
    reviews = Review.objects.decided().select_related("reviewer")
    if feedback_ids is not None:
        reviews = reviews.filter(feedback_id__in=feedback_ids)
    found = {}
    for review in reviews:
        found.setdefault(review.feedback_id, {})[review.reviewer.get_username()] = review.decision
    return found


def agreement_report(feedback_ids=None):
    """Items decided, reviewers, Fleiss' kappa and each pair's Cohen's kappa (of these items, if given)."""
    decided = decisions(feedback_ids)
    kappa, items_ = overall(decided, [Review.Decision.APPROVED, Review.Decision.REJECTED])
    return {
        "items": len(decided),
        "reviewers": len({r for labels in decided.values() for r in labels}),
        "fleiss_kappa": kappa,
        "fleiss_items": items_,
        "pairs": [
            {"a": a, "b": b, "items": shared, "observed": observed, "cohen_kappa": pair_kappa}
            for a, b, shared, observed, pair_kappa in pairwise(decided)
        ],
    }
