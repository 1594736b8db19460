"""BERT base uncased WordPiece, built from the vocabulary committed beside this file (no hub)."""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB_FILE = Path(__file__).with_name("bert-base-uncased-vocab.txt")
PAD_ID, UNK_ID, START_ID, END_ID = 0, 100, 101, 102
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# transformers' clean_up_tokenization, applied in this order
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class CaptionTokenizer:
    """Text <-> token ids as CATR's BERT tokenizer does: [CLS] caption [SEP], lower-cased."""

    def __init__(self, vocab_file=VOCAB_FILE):
        with open(vocab_file, encoding="utf-8") as f:
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", START_ID), ("[SEP]", END_ID)])
        # the decoder's own clean-up works token by token and leaves "isn ' t"; the whole-string
        # clean-up below is the one CATR's transformers tokenizer applies
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text):
        """[101, ..., 102] for ``text``."""
        return self._tokenizer.encode(text).ids

    def decode(self, ids):
        """The caption as CATR prints it: special tokens dropped, then str.capitalize()."""
        text = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        for spaced, joined in CLEAN_UP:
            text = text.replace(spaced, joined)
        return text.capitalize()

    def pieces(self, ids):
        """Each id's display string: the word piece itself ('##' kept on continuations),
        <start> and <end> for [CLS] and [SEP]."""
        names = {START_ID: "<start>", END_ID: "<end>"}
        return [names.get(i) or self._tokenizer.id_to_token(i) for i in ids]
