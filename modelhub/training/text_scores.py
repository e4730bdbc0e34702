"""Scores of a model's answers against reference answers, and a paired bootstrap of their differences.

Pure functions on lists of strings and numbers: no Django, no torch. The reference
libraries do the scoring, so the numbers are the ones papers report:

    bleu, chrf          sacrebleu's corpus_bleu / corpus_chrf (corpus-level, 0-100)
    rouge1/2/L          rouge-score's RougeScorer F1 (no stemming), the mean over rows (0-1)
    distinct1/2         distinct n-grams / all n-grams of the answers together (Li et al. 2016), 0-1
    mean/median_length  answer length in whitespace-separated words
    perplexity          exp(total NLL / total tokens) of the reference answers under the model,
                        from per-row (summed NLL, token count) pairs (modelhub/training/evaluation.py)

Neither library downloads anything: rouge-score's tokenizer is a regular expression,
sacrebleu's default tokenizer ("13a") is built in. sacrebleu and rouge_score are
imported inside the functions, so Django start-up never pays for them.

`compare()` puts candidates side by side: each metric's difference against the first
candidate (the base), with a paired bootstrap 95% interval: the rows are resampled with
replacement (a seeded RNG: the same report twice gives the same interval), every
metric, corpus ones included, is recomputed on the resample for both candidates, and
the 2.5th and 97.5th percentiles of the differences are the interval.
"""

import math
import random
import statistics

METRICS = (
    "perplexity",
    "bleu",
    "chrf",
    "rouge1",
    "rouge2",
    "rougeL",
    "distinct1",
    "distinct2",
    "mean_length",
    "median_length",
)
LOWER_IS_BETTER = frozenset({"perplexity"})
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def bleu(answers, references):
    from sacrebleu import corpus_bleu

    return corpus_bleu(list(answers), [list(references)]).score


def chrf(answers, references):
    from sacrebleu import corpus_chrf

    return corpus_chrf(list(answers), [list(references)]).score


def rouge_rows(answers, references):
    """Per row, {"rouge1": F1, "rouge2": F1, "rougeL": F1} of the answer against its reference."""
    from rouge_score.rouge_scorer import RougeScorer
    from rouge_score.tokenizers import DefaultTokenizer

    # The scorer's own default tokenizer, given explicitly: RougeScorer logs a line per scorer otherwise.
    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=DefaultTokenizer(use_stemmer=False))
    return [
        {name: score.fmeasure for name, score in scorer.score(reference, answer).items()}
        for answer, reference in zip(answers, references)
    ]


def ngrams(text, n):
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct(answers, n):
    """Distinct n-grams over all n-grams of the answers (whitespace words); 0 when there are none."""
    grams = [gram for answer in answers for gram in ngrams(answer, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def perplexity(nll_rows):
    """exp(total NLL / total tokens) from (summed NLL, token count) pairs; None without any token."""
    tokens = sum(count for _, count in nll_rows)
    if not tokens:
        return None
    return math.exp(min(sum(nll for nll, _ in nll_rows) / tokens, 50.0))


def score(answers, references, nll_rows=None, rouge=None):
    """Every metric of one candidate on these rows. `rouge` (rouge_rows' output) and `nll_rows`
    may be given per row; perplexity is None without `nll_rows` (a model with no local weights)."""
    answers, references = list(answers), list(references)
    rouge = rouge if rouge is not None else rouge_rows(answers, references)
    lengths = [len(answer.split()) for answer in answers]
    scores = {
        "perplexity": perplexity(nll_rows) if nll_rows else None,
        "bleu": bleu(answers, references),
        "chrf": chrf(answers, references),
        "distinct1": distinct(answers, 1),
        "distinct2": distinct(answers, 2),
        "mean_length": statistics.fmean(lengths) if lengths else 0.0,
        "median_length": float(statistics.median(lengths)) if lengths else 0.0,
    }
    for name in ROUGE_TYPES:
        scores[name] = statistics.fmean(row[name] for row in rouge) if rouge else 0.0
    return {name: scores[name] for name in METRICS}


def _percentile(values, fraction):
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _subset(candidate, indexes):
    nll = candidate.get("nll")
    return {
        "answers": [candidate["answers"][i] for i in indexes],
        "rouge": [candidate["rouge"][i] for i in indexes],
        "nll": [nll[i] for i in indexes] if nll else None,
    }


def _score_subset(candidate, references, indexes):
    part = _subset(candidate, indexes)
    return score(part["answers"], [references[i] for i in indexes], part["nll"], part["rouge"])


def compare(candidates, references, resamples=1000, seed=0):
    """Candidates side by side on the same rows; the first is the baseline.

    `candidates`: {name: {"answers": [str], "nll": [(summed NLL, tokens)] or None}}, one entry per
    row each, in the order of `references`. Returns {"metrics": {name: {metric: value}},
    "differences": {name: {metric: {"difference", "low", "high"}}}} for every candidate after the first
    (a metric None for either side has no difference).
    """
    names = list(candidates)
    if len(names) < 2:
        raise ValueError("a comparison needs at least two candidates")
    references = list(references)
    rows = range(len(references))
    prepared = {
        name: {**candidate, "rouge": rouge_rows(candidate["answers"], references)}
        for name, candidate in candidates.items()
    }
    metrics = {name: _score_subset(prepared[name], references, rows) for name in names}
    base = names[0]
    samples = {name: {metric: [] for metric in METRICS} for name in names[1:]}
    rng = random.Random(seed)
    for _ in range(resamples):
        indexes = [rng.randrange(len(references)) for _ in rows]
        base_scores = _score_subset(prepared[base], references, indexes)
        for name in names[1:]:
            other = _score_subset(prepared[name], references, indexes)
            for metric in METRICS:
                if other[metric] is not None and base_scores[metric] is not None:
                    samples[name][metric].append(other[metric] - base_scores[metric])
    differences = {}
    for name in names[1:]:
        differences[name] = {}
        for metric in METRICS:
            if metrics[name][metric] is None or metrics[base][metric] is None:
                continue
            drawn = samples[name][metric]
            differences[name][metric] = {
                "difference": metrics[name][metric] - metrics[base][metric],
                "low": _percentile(drawn, 0.025) if drawn else None,
                "high": _percentile(drawn, 0.975) if drawn else None,
            }
    return {"metrics": metrics, "differences": differences}
