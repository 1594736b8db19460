"""BLEU-4 and CIDEr-D on inputs whose values are known by hand."""
import math

import pytest

from p2.metrics import bleu4, cider, words


def test_words_lower_cases_and_drops_punctuation():
    assert words("A man, riding a horse.") == ["a", "man", "riding", "a", "horse"]
    assert words("2 dogs' 3rd ball") == ["2", "dogs", "3rd", "ball"]


def test_bleu4_of_identical_captions_is_one():
    captions = ["a red circle to the left of a blue square", "a green cross on a grey field"]
    assert bleu4(captions, [[c] for c in captions]) == pytest.approx(1.0)


def test_bleu4_hand_computed():
    # candidate "the cat sat on the mat" (6 words) against "the cat sat on a mat" (6 words):
    # unigrams 5/6 ("the" clipped to 1), bigrams 3/5, trigrams 2/4, 4-grams 1/3, no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu4(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected)


def test_bleu4_brevity_penalty_uses_the_closest_reference():
    # 4 matching words against references of 4 and 8 words: the closest (4) gives no penalty
    assert bleu4(["a b c d"], [["a b c d e f g h", "a b c d"]]) == pytest.approx(1.0)
    # against a single 8-word reference every precision is 1 and the penalty is exp(1 - 8/4)
    assert bleu4(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(-1))
    # 4 words, references of 2 and 6 words, as close: the shorter one, so no penalty
    assert bleu4(["a b c d"], [["a b", "a b c d x y"]]) == pytest.approx(1.0)


def test_bleu4_without_a_matching_four_gram_is_zero():
    assert bleu4(["a b c"], [["a b c"]]) == 0.0


def test_cider_hand_computed():
    # Two images; every n-gram of the first caption appears only in image 1's reference, so its
    # idf is log(2) for all of them and the candidate equals the reference: cosine 1 for n = 1..3
    # (the 3-word caption has no 4-gram: that order adds 0), no length damping:
    # 10 * (1 + 1 + 1 + 0) / 4 = 7.5. The second candidate shares no n-gram with its reference.
    score = cider(["red circle here", "x y"], [["red circle here"], ["p q"]])
    assert score == pytest.approx((7.5 + 0.0) / 2)


def test_cider_n_grams_shared_by_every_image_weigh_nothing():
    # "a" occurs in every image's references: idf log(2/2) = 0; only the other words count.
    both = cider(["a dog", "a cat"], [["a dog"], ["a cat"]])
    # per image: unigram cosine 1 ("dog"), bigram cosine 1 ("a dog"), no 3- or 4-grams
    assert both == pytest.approx(10 * 2 / 4)


def test_cider_length_damping():
    # the candidate repeats the reference's only unigram twice: tf 2 vs 1, clipped overlap
    # min(2w, w) * w = w^2 against norms 2w and w: cosine 0.5; the bigram "z z" is absent.
    # Bigram-count lengths 1 vs 0: damping exp(-1 / 72).
    score = cider(["z z", "q"], [["z"], ["q"]])
    first = 10 * (0.5 * math.exp(-1 / 72)) / 4
    second = 10 * 1.0 / 4
    assert score == pytest.approx((first + second) / 2)


def test_a_reference_given_twice_changes_no_score():
    # COCO gives each image five references: n-gram counts are clipped at the most any one
    # reference has, an n-gram's document frequency counts images, not captions, and CIDEr
    # averages over the references
    candidates = ["a dog and a dog run on the green grass", "a cat on a mat"]
    once = [["a dog runs on the green grass"], ["the cat sits on a mat"]]
    twice = [refs * 2 for refs in once]
    for metric in (bleu4, cider):
        assert metric(candidates, once) > 0
        assert metric(candidates, twice) == pytest.approx(metric(candidates, once))
