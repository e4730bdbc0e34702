"""Bradley–Terry ratings from pairwise games (conversations/arena/ratings.py): pure functions."""

import math

import pytest

from conversations.arena.ratings import elo, strengths, table


def by_player(rows):
    return {row.player: row for row in rows}


def test_a_player_who_wins_every_game_ranks_first_with_a_finite_rating_and_the_loser_last():
    games = [("ace", "mid", 1), ("ace", "low", 1), ("mid", "low", 1), ("low", "ace", 0), ("mid", "low", 0.5)]
    rows = table(games)
    assert [row.player for row in rows] == ["ace", "mid", "low"]
    assert all(math.isfinite(row.elo) for row in rows) and rows[0].elo > 1000 > rows[2].elo


def test_symmetric_results_give_equal_ratings_at_the_reference():
    rows = by_player(table([("a", "b", 1), ("b", "a", 1), ("c", "a", 0.5), ("b", "c", 0.5)], resamples=0))
    assert rows["a"].elo == pytest.approx(1000) and rows["b"].elo == pytest.approx(1000)
    assert rows["c"].elo == pytest.approx(1000)


def test_a_tie_counts_as_half_a_win_for_each_side():
    assert table([("a", "b", 0.5)])[0].elo == pytest.approx(1000)
    one_win_one_loss = strengths([("a", "b", 1), ("a", "b", 0)])
    two_ties = strengths([("a", "b", 0.5), ("a", "b", 0.5)])
    assert one_win_one_loss == pytest.approx(two_ties)


def test_counts_are_games_wins_losses_and_ties_from_each_players_side():
    rows = by_player(table([("a", "b", 1), ("b", "a", 1), ("a", "c", 0.5), ("c", "b", 0)]))
    assert (rows["a"].games, rows["a"].wins, rows["a"].losses, rows["a"].ties) == (3, 1, 1, 1)
    assert (rows["b"].games, rows["b"].wins, rows["b"].losses, rows["b"].ties) == (3, 2, 1, 0)
    assert (rows["c"].games, rows["c"].wins, rows["c"].losses, rows["c"].ties) == (2, 0, 1, 1)


def test_with_a_vanishing_prior_the_fit_is_the_maximum_likelihood_odds():
    """Three wins in four games: Bradley–Terry's estimate is 3:1 odds, 400·log10(3) Elo apart."""
    fitted = strengths([("a", "b", 1)] * 3 + [("a", "b", 0)], prior=1e-9)
    assert fitted["a"] / fitted["b"] == pytest.approx(3, rel=1e-5)
    assert elo(fitted["a"]) - elo(fitted["b"]) == pytest.approx(400 * math.log10(3), rel=1e-5)


def test_the_bootstrap_interval_surrounds_the_rating_and_is_the_same_for_the_same_seed():
    games = [("a", "b", 1)] * 6 + [("a", "b", 0)] * 2 + [("b", "c", 1)] * 5 + [("b", "c", 0.5)]
    first, again = table(games, seed=4), table(games, seed=4)
    assert first == again
    for row in first:
        assert row.low <= row.elo <= row.high and row.low < row.high


def test_no_games_give_no_ratings_and_impossible_games_are_refused():
    assert table([]) == []
    for games in ([("a", "a", 1)], [("a", "b", 2)]):
        with pytest.raises(ValueError):
            strengths(games)
    with pytest.raises(ValueError):
        strengths([("a", "b", 1)], prior=0)
