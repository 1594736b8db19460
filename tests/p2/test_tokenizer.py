from p2.tokenizer import END_ID, START_ID, CaptionTokenizer

TOKENIZER = CaptionTokenizer()


def test_vocabulary_and_special_ids():
    assert TOKENIZER.vocab_size == 30522
    assert TOKENIZER.encode("") == [START_ID, END_ID]
    assert TOKENIZER.pieces([0, 100, 101, 102]) == ["[PAD]", "[UNK]", "<start>", "<end>"]


def test_known_ids_and_word_pieces():
    ids = TOKENIZER.encode("A man riding a wave on top of a surfboard.")
    assert ids == [101, 1037, 2158, 5559, 1037, 4400, 2006, 2327, 1997, 1037, 14175, 6277, 1012,
                   102]
    assert TOKENIZER.pieces(ids[10:13]) == ["surf", "##board", "."]


def test_decode_is_catr_text():
    # lower-cased, pieces joined, no space before punctuation or in contractions, then
    # str.capitalize() as CATR's predict script prints it
    ids = TOKENIZER.encode("A Man riding a WAVE. He isn't Surfing, it's a Café!")
    assert TOKENIZER.decode(ids) == "A man riding a wave. he isn't surfing, it's a cafe!"


def test_round_trip_and_special_tokens_dropped():
    text = "a giraffe standing next to a tree in a field"
    ids = TOKENIZER.encode(text)
    assert TOKENIZER.decode(ids) == text.capitalize()
    assert TOKENIZER.decode([101, 0] + ids[1:-1] + [102, 0, 0]) == text.capitalize()
    assert TOKENIZER.encode(TOKENIZER.decode(ids)) == ids
