"""Tokenizer: a sentencepiece BPE (byte fallback) saved as a Hugging Face tokenizer.

sentencepiece (Kudo & Richardson, 2018) trains the BPE merges (Sennrich et al., 2016); the
model is then converted to a `tokenizers` pipeline so `AutoTokenizer.from_pretrained(dir)`
loads it offline with no sentencepiece import. Choices that make the round trip
decode(encode(text)) == text exact:

- `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`: no NFKC, no
  whitespace squeezing (the sentencepiece defaults change the text).
- `add_dummy_prefix=False`: no invented leading space. The stock Llama conversion in
  transformers adds a Metaspace "prepend first" step and a `Strip` decoder, which drop a
  real leading space; we replace them by a Metaspace split with `prepend_scheme="never"`
  (the same "▁word" units sentencepiece trains on) and a decoder without `Strip`.
- `byte_fallback=True`: any character outside the learned pieces (emoji, CJK, newlines,
  tabs) is spelled as <0xNN> byte tokens, so nothing maps to <unk>.

Special tokens get fixed ids that the model config takes as is:
pad=0 `<pad>`, bos=1 `<s>`, eos=2 `</s>`, unk=3 `<unk>`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

SPECIAL_TOKENS = {"pad": ("<pad>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2), "unk": ("<unk>", 3)}
MAX_SENTENCE_BYTES = 4000  # sentencepiece skips training "sentences" longer than max_sentence_length


def _training_pieces(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Lines of `texts`, long lines cut at a space below MAX_SENTENCE_BYTES, until max_chars."""
    budget = max_chars
    for text in texts:
        for line in text.split("\n"):
            while len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
                cut = line.rfind(" ", 0, MAX_SENTENCE_BYTES // 4)  # // 4: 4 bytes per char at most
                cut = cut if cut > 0 else MAX_SENTENCE_BYTES // 4
                yield line[:cut]
                budget -= cut
                line = line[cut:]
            if line:
                yield line
                budget -= len(line)
            if budget <= 0:
                return


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_dir: Path, max_chars: int, seed: int = 0) -> Path:
    """Train a BPE sentencepiece model on `texts` and save it as an HF tokenizer in `out_dir`."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prefix = Path(tmp) / "spm"
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_pieces(texts, max_chars),
                model_prefix=str(prefix),
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                character_coverage=0.9995,
                max_sentence_length=MAX_SENTENCE_BYTES * 2,
                pad_id=SPECIAL_TOKENS["pad"][1], pad_piece=SPECIAL_TOKENS["pad"][0],
                bos_id=SPECIAL_TOKENS["bos"][1], bos_piece=SPECIAL_TOKENS["bos"][0],
                eos_id=SPECIAL_TOKENS["eos"][1], eos_piece=SPECIAL_TOKENS["eos"][0],
                unk_id=SPECIAL_TOKENS["unk"][1], unk_piece=SPECIAL_TOKENS["unk"][0],
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise ValueError(
                f"sentencepiece could not train a vocabulary of {vocab_size} tokens on this text: {err}. "
                "Fix: lower data.vocab_size (small corpora support only a few thousand merges) or add text."
            ) from err
        _save_hf_tokenizer(Path(f"{prefix}.model"), out_dir)
    return out_dir


def _save_hf_tokenizer(spm_file: Path, out_dir: Path) -> None:
    """Convert the sentencepiece model to a `tokenizers` pipeline and save_pretrained it."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        # LlamaTokenizer(vocab_file=...) silently builds a 3-token vocab in transformers 5;
        # from_pretrained of a folder holding tokenizer.model converts the real one.
        shutil.copy(spm_file, Path(tmp) / "tokenizer.model")
        llama = LlamaTokenizer.from_pretrained(tmp, add_bos_token=False, add_eos_token=False, legacy=False)
        backend = llama.backend_tokenizer
    # Split on spaces exactly like sentencepiece's training (split_by_whitespace): "▁word" units,
    # no invented prefix. BPE then runs per word, which lets tokenizers cache repeated words.
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad"][0],
        bos_token=SPECIAL_TOKENS["bos"][0],
        eos_token=SPECIAL_TOKENS["eos"][0],
        unk_token=SPECIAL_TOKENS["unk"][0],
        clean_up_tokenization_spaces=False,
    )
    for name, (piece, idx) in SPECIAL_TOKENS.items():
        got = tok.convert_tokens_to_ids(piece)
        if got != idx:
            raise RuntimeError(f"converted tokenizer maps {name} token {piece!r} to id {got}, expected {idx}")
    tok.save_pretrained(str(out_dir))


def load_tokenizer_by_name(name_or_dir: str):
    """An existing HF tokenizer (directory or Hub name), as data.tokenizer names it; ValueError if unloadable."""
    from transformers import AutoTokenizer

    try:
        # never run remote code for a tokenizer, and never prompt for it: a model folder (e.g. a run's export or
        # a train.init_from folder) maps AutoConfig to its remote code, which the tokenizer does not need
        return AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=False)
    except Exception as err:  # OSError, ValueError, ... depending on what is wrong
        raise ValueError(
            f"data.tokenizer={name_or_dir!r} could not be loaded as a Hugging Face tokenizer ({err}). "
            "Fix: point it at a folder holding tokenizer.json / tokenizer_config.json, or unset it to train one."
        ) from err


def tokenizer_vocab_size(tok) -> int:
    """Rows an embedding needs for every id of `tok` (ids need not be contiguous)."""
    return max(len(tok), max(tok.get_vocab().values()) + 1)


def import_tokenizer(name_or_dir: str, out_dir: Path) -> Path:
    """Copy an existing HF tokenizer (directory or Hub name) into `out_dir` via save_pretrained."""
    tok = load_tokenizer_by_name(name_or_dir)
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {name_or_dir!r} has no eos token, which marks document ends in the shards. "
            "Fix: set eos_token in its tokenizer_config.json, or unset data.tokenizer to train one."
        )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return Path(out_dir)


def load_tokenizer(path: str | Path):
    """The transformers tokenizer of a prepared data folder (`out_dir` or `out_dir/tokenizer`)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if (path / "tokenizer").is_dir():
        path = path / "tokenizer"
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer folder at {path}: run prepare_data (launch/prepare_data.py) first")
    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_sha256(tok_dir: Path) -> str:
    """Checksum of the files that define the token ids (tokenizer.json, else all files)."""
    tok_dir = Path(tok_dir)
    files = [tok_dir / "tokenizer.json"] if (tok_dir / "tokenizer.json").is_file() else sorted(
        p for p in tok_dir.iterdir() if p.is_file()
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class DocumentEncoder:
    """Picklable batch encoder for `datasets.map`: text -> ids + [eos] per document.

    For a tokenizer trained here (whitespace-split pre-tokenizer, see `_save_hf_tokenizer`) it
    splits on " " in Python and caches the ids of each distinct word, calling the tokenizer only
    for unseen words: the same ids as `tok(text)` (checked by `check_encoder_agreement` and the
    tests), several times faster since natural text repeats its words. Any other tokenizer
    is called directly. Special-token text inside a document (a literal "</s>") is encoded as
    text, so EOS only ever marks document ends.
    """

    def __init__(self, tok_dir: Path, text_column: str = "text"):
        self.tok_dir = str(tok_dir)
        self.text_column = text_column
        tok = load_tokenizer(tok_dir)
        self.eos_token_id = tok.eos_token_id
        self.word_split = _is_word_split(tok.backend_tokenizer) if hasattr(tok, "backend_tokenizer") else False
        self._backend = self._hf = None
        self._cache: dict[str, list[int]] = {}

    def __getstate__(self):
        return {"tok_dir": self.tok_dir, "text_column": self.text_column, "eos_token_id": self.eos_token_id,
                "word_split": self.word_split}

    def __setstate__(self, state):
        self.__dict__.update(state, _backend=None, _hf=None, _cache={})

    def _encode_new_words(self, words: list[str]) -> list[list[int]]:
        """Ids of each word; one tokenizer call on the joined words, split back by `word_ids`."""
        enc = self._backend.encode("".join(words), add_special_tokens=False)
        groups: list[list[int]] = [[] for _ in words]
        try:
            for token, word in zip(enc.ids, enc.word_ids):
                groups[word].append(token)
        except (IndexError, TypeError):
            groups = []
        if len(set(enc.word_ids)) != len(words) or not all(groups):  # unexpected split: one call per word
            groups = [e.ids for e in self._backend.encode_batch(words, add_special_tokens=False)]
        return groups

    def _encode_words(self, text: str) -> list[int]:
        parts = text.split(" ")
        # Metaspace(split=True) units: only the first word can lack the "\u2581" prefix, and it stays
        # first in `missing`, so joining the missing words re-splits into exactly these words.
        words = ([parts[0]] if parts[0] else []) + ["\u2581" + p for p in parts[1:]]
        cache = self._cache
        missing = [w for w in words if w not in cache]
        if missing:
            if len(cache) > 2_000_000:  # bound memory on huge corpora
                cache.clear()
                missing = words
            missing = list(dict.fromkeys(missing))
            cache.update(zip(missing, self._encode_new_words(missing)))
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.word_split:
            if self._backend is None:
                from tokenizers import Tokenizer

                self._backend = Tokenizer.from_file(str(Path(self.tok_dir) / "tokenizer.json"))
                self._backend.encode_special_tokens = True
            # A literal "\u2581" is a split point for the real pre-tokenizer: let it handle such text.
            return [self._encode_words(t) if "\u2581" not in t else
                    self._backend.encode(t, add_special_tokens=False).ids for t in texts]
        if self._hf is None:
            self._hf = load_tokenizer(self.tok_dir)
        return self._hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def __call__(self, batch: dict) -> dict:
        ids = self.encode(batch[self.text_column])
        eos = self.eos_token_id
        return {"input_ids": [doc + [eos] for doc in ids]}


def _is_word_split(backend) -> bool:
    """True for the pipeline `_save_hf_tokenizer` writes (no normalizer, Metaspace split, never prepend)."""
    state = json.loads(backend.to_str())
    pre = state.get("pre_tokenizer") or {}
    return (state.get("normalizer") is None and pre.get("type") == "Metaspace" and pre.get("split") is True
            and pre.get("prepend_scheme") == "never" and pre.get("replacement") == "\u2581")


def check_encoder_agreement(tok_dir: Path, texts: list[str]) -> None:
    """Fail loudly if the fast encoder and the saved HF tokenizer disagree on ids or round trip."""
    tok = load_tokenizer(tok_dir)
    enc = DocumentEncoder(tok_dir)
    for text in texts:
        ours = enc.encode([text])[0]
        theirs = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if ours != theirs:
            raise RuntimeError(f"{tok_dir}: cached-word encoder and HF tokenizer ids differ on {text[:60]!r}")
        if tok.decode(theirs) != text:
            raise RuntimeError(f"{tok_dir}: decode(encode(text)) != text for {text[:60]!r}")
