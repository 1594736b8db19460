"""Caption metrics: corpus BLEU-4 (Papineni et al.) and CIDEr-D (as the COCO caption evaluation).

Texts are compared as lower-cased words with punctuation dropped (``words``), which is what the
COCO evaluation's tokenizer leaves for the captions this project writes.
"""
import math
import re
from collections import Counter

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text):
    return WORD.findall(text.lower())


def ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidates, references):
    """Corpus BLEU-4 of ``candidates`` [text] against ``references`` [[text, ...]], in [0, 1].

    Clipped n-gram counts (n = 1..4) are summed over the corpus before the precisions are taken,
    uniform weights, no smoothing (any n with no match gives 0), and a brevity penalty against
    the reference length closest to each candidate's (the shorter one on a tie).
    """
    if len(candidates) != len(references):
        raise ValueError("one list of references per candidate is needed")
    matched, total = [0] * 4, [0] * 4
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references):
        hyp = words(candidate)
        refs = [words(r) for r in refs]
        candidate_length += len(hyp)
        reference_length += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, 5):
            counts = ngrams(hyp, n)
            most = Counter()
            for r in refs:
                most |= ngrams(r, n)
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = min(0.0, 1 - reference_length / candidate_length)
    return math.exp(log_precision + brevity)


def cider(candidates, references, n=4, sigma=6.0):
    """CIDEr-D of ``candidates`` against ``references``, the mean over images (COCO's scale,
    where a perfect caption of a typical corpus scores several units).

    Each caption is a tf-idf vector of its n-grams per order, idf from the number of images
    whose references contain the n-gram; a candidate's counts are clipped at the reference's,
    the cosine is damped by a Gaussian of the length difference, then averaged over orders and
    references and multiplied by 10. The idf needs several images: one alone scores 0.
    """
    if len(candidates) != len(references):
        raise ValueError("one list of references per candidate is needed")
    references = [[words(r) for r in refs] for refs in references]
    document_frequency = Counter()
    for refs in references:
        document_frequency.update({g for r in refs for k in range(1, n + 1) for g in ngrams(r, k)})
    log_images = math.log(float(len(references)))

    def vectors(tokens):
        per_order = []
        for k in range(1, n + 1):
            vec = {g: c * (log_images - math.log(max(1.0, document_frequency[g])))
                   for g, c in ngrams(tokens, k).items()}
            per_order.append((vec, math.sqrt(sum(v * v for v in vec.values()))))
        # the COCO code measures length in bigrams; the same differences for non-empty texts
        return per_order, max(len(tokens) - 1, 0)

    scores = []
    for candidate, refs in zip(candidates, references):
        hyp, hyp_length = vectors(words(candidate))
        total = 0.0
        for ref in refs:
            ref_vectors, ref_length = vectors(ref)
            damping = math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma ** 2))
            for (h, h_norm), (r, r_norm) in zip(hyp, ref_vectors):
                if h_norm and r_norm:
                    overlap = sum(min(v, r[g]) * r[g] for g, v in h.items() if g in r)
                    total += overlap / (h_norm * r_norm) * damping / n
        scores.append(10.0 * total / len(refs))
    return sum(scores) / len(scores)
