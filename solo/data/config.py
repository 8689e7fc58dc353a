"""Settings of the data stage (`data:` in a pipeline config, `configs/data/`): what to read and how to clean it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from solo.config import Schema, checkout_root


class InputSpec(Schema):
    """One source of raw text. `path: embedded` is the corpus built from this Python's docs."""

    path: str
    """A file or folder of text, jsonl, json, parquet or arrow (jsonl and json gzipped or zstd-compressed too); a
    folder written by Hugging Face `save_to_disk` or a `datasets` cache folder; `hf://datasets/OWNER/NAME[/PATH]`
    (downloaded once into the Hugging Face cache); or `embedded`."""
    format: Literal["auto", "text", "jsonl", "parquet", "json", "arrow"] = "auto"
    """How to read the files; auto: by each file's extension (a file with none is text)."""
    split: str | None = Field(default=None, exclude_if=lambda split: split is None)
    """The split to read of a folder written by DatasetDict.save_to_disk (or of a datasets cache folder); null:
    its only split (one with several is an error that lists them). Left out of the settings' dump while null, so
    that runs made before this setting existed keep their fingerprints."""
    text_field: str = "text"
    """The field (jsonl, json) or column (parquet, arrow) that holds a record's text."""
    id_field: str | None = "id"
    """The field that holds a record's id; records without one get a stable id from their file and line."""
    domain: str = "default"
    """The label mixing weights and reports group this input's documents under."""
    max_documents: int | None = Field(default=None, ge=1)
    """Read at most this many documents of this input; null: all."""
    quality_filters: bool | None = None
    """Run the web-text rules (language id, Gopher, C4, FineWeb) on this input; off for code or docs,
    which trip them. Default: on, except for the embedded corpus."""

    def applies_quality_filters(self) -> bool:
        return self.quality_filters if self.quality_filters is not None else self.path != "embedded"


# Quality rules as FineWeb ran them (datatrove's defaults). A threshold set to null turns its rule off.


class GopherQualityConfig(Schema):
    """Gopher's quality rules (MassiveText): a document outside any bound is dropped as `gopher_*`."""

    enabled: bool = True
    """Apply these rules."""
    min_doc_words: int | None = Field(default=50, ge=0)
    """Fewest words (not counting those that are only punctuation)."""
    max_doc_words: int | None = Field(default=100_000, ge=1)
    """Most words."""
    min_avg_word_length: float | None = Field(default=3, ge=0)
    """Shortest mean word length, in characters."""
    max_avg_word_length: float | None = Field(default=10, ge=0)
    """Longest mean word length, in characters."""
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0)
    """Most '#' and ellipses per word."""
    max_bullet_lines_ratio: float | None = Field(default=0.9, ge=0, le=1)
    """Most share of lines starting with a bullet (• or -)."""
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, ge=0, le=1)
    """Most share of lines ending with ... or …."""
    min_alpha_words_ratio: float | None = Field(default=0.8, ge=0, le=1)
    """Least share of words with a letter in them."""
    min_stop_words: int | None = Field(default=2, ge=0)
    """Fewest distinct stop words (of `stop_words`) the document must have."""
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]
    """The stop words `min_stop_words` counts."""


class GopherRepetitionConfig(Schema):
    """Gopher's repetition rules: a document that repeats its lines, paragraphs or n-grams too much is dropped."""

    enabled: bool = True
    """Apply these rules."""
    dup_line_frac: float | None = Field(default=0.3, ge=0, le=1)
    """Most share of lines that repeat an earlier line."""
    dup_para_frac: float | None = Field(default=0.3, ge=0, le=1)
    """Most share of paragraphs that repeat an earlier paragraph."""
    dup_line_char_frac: float | None = Field(default=0.2, ge=0, le=1)
    """Most share of the characters that sit in repeated lines."""
    dup_para_char_frac: float | None = Field(default=0.2, ge=0, le=1)
    """Most share of the characters that sit in repeated paragraphs."""
    top_n_grams: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    """n → most share of the characters the most frequent word n-gram may cover."""
    dup_n_grams: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    """n → most share of the characters that may sit in repeated word n-grams."""


class C4Config(Schema):
    """C4's rules: lines are removed (too few words, javascript, cookie and terms-of-use lines,
    citations), pages dropped (lorem ipsum, a curly bracket, too few sentences)."""

    enabled: bool = True
    """Apply these rules."""
    filter_no_terminal_punct: bool = False
    """Remove lines not ending in . ? ! " ' (off, as FineWeb ran it)."""
    min_num_sentences: int | None = Field(default=5, ge=0)
    """Fewest sentences a page must keep after its lines are removed."""
    min_words_per_line: int | None = Field(default=3, ge=0)
    """Lines with fewer words are removed."""
    max_word_length: int | None = Field(default=1000, ge=1)
    """Lines with a longer word (in characters) are removed."""
    remove_citations: bool = True
    """Remove citation marks: [1], [edit], [citation needed]."""
    filter_lorem_ipsum: bool = True
    """Drop pages containing "lorem ipsum"."""
    filter_javascript: bool = True
    """Remove lines that mention javascript."""
    filter_curly_bracket: bool = True
    """Drop pages with a curly bracket (code, templates)."""
    filter_policy: bool = True
    """Remove cookie, privacy and terms-of-use lines."""


class FineWebConfig(Schema):
    """FineWeb's own rules, on the lines of a page."""

    enabled: bool = True
    """Apply these rules."""
    line_punct_thr: float | None = Field(default=0.12, ge=0, le=1)
    """Least share of lines ending in terminal punctuation."""
    line_punct_exclude_zero: bool = False
    """Keep a page none of whose lines end in terminal punctuation (FineWeb drops it)."""
    short_line_thr: float | None = Field(default=0.67, ge=0, le=1)
    """Most share of short lines."""
    short_line_length: int = Field(default=30, ge=1)
    """A line this many characters or fewer is short."""
    char_duplicates_ratio: float | None = Field(default=0.01, ge=0, le=1)
    """Most share of the characters in lines that repeat."""
    new_line_ratio: float | None = Field(default=0.3, ge=0)
    """Most newlines per word (list-like pages)."""


class LanguageConfig(Schema):
    """Language identification with py3langid (its model ships in the package)."""

    enabled: bool = True
    """Drop documents not in `languages`, as `language:<code>`."""
    languages: list[str] = Field(default=["en"], min_length=1)
    """ISO 639-1 codes of the languages to keep."""
    threshold: float = Field(default=0.65, ge=0, le=1)
    """Least probability of a kept language."""


class PIIConfig(Schema):
    """Personal data in kept text replaced by placeholders."""

    enabled: bool = True
    """Scrub kept text at all."""
    email: bool = True
    """Replace e-mail addresses with <EMAIL>."""
    ip: bool = True
    """Replace IPv4 and IPv6 addresses with <IP>."""
    phone: bool = True
    """Replace phone numbers with <PHONE>."""


class BoilerplateConfig(Schema):
    """Lines repeated across many documents of one domain (menus, "Jump to navigation") removed."""

    enabled: bool = True
    """Find and remove such lines (a first pass over the inputs)."""
    min_documents: int = Field(default=10, ge=2)
    """Documents of a domain a line must appear in to count as boilerplate."""


class QualityClassifierConfig(Schema):
    """A fastText-style linear classifier over hashed word unigrams and bigrams, trained at the start
    of the stage from the user's examples; a document it scores under `threshold` is dropped
    (`quality_classifier`). Example files are read like inputs: jsonl or a JSON list (`text_field`),
    a text file (one example), or a folder of them."""

    positives: str
    """Examples of text to keep; a relative path is from the repo root."""
    negatives: str
    """Examples of text to drop; a relative path is from the repo root."""
    text_field: str = "text"
    """The field of a jsonl or JSON record that holds an example's text."""
    threshold: float = Field(default=0.5, ge=0, le=1)
    """Least probability of the positive class for a document to be kept."""
    held_out: float = Field(default=0.1, gt=0, lt=1)
    """Share of each class kept out of training to measure the accuracy."""
    buckets: int = Field(default=1 << 18, ge=1024)
    """Hash buckets the unigrams and bigrams share."""
    epochs: int = Field(default=100, ge=1)
    """Full-batch Adam steps over the training examples."""
    learning_rate: float = Field(default=0.5, gt=0)
    """Adam's learning rate."""
    seed: int = 0
    """Picks the held-out examples."""


class FilterConfig(Schema):
    """Cleaning after normalization, in FineWeb's order: boilerplate lines, language, Gopher
    repetition, Gopher quality, C4, FineWeb, then the optional quality classifier; then PII in the
    kept text."""

    boilerplate: BoilerplateConfig = BoilerplateConfig()
    """Repeated lines removed per domain."""
    language: LanguageConfig = LanguageConfig()
    """Language identification."""
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    """Gopher's repetition rules."""
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    """Gopher's quality rules."""
    c4: C4Config = C4Config()
    """C4's line and page rules."""
    fineweb: FineWebConfig = FineWebConfig()
    """FineWeb's line rules."""
    classifier: QualityClassifierConfig | None = None
    """A quality classifier trained on your examples; off unless given."""
    pii: PIIConfig = PIIConfig()
    """Personal data scrubbed from kept text."""


class DedupConfig(Schema):
    """Dedup over the whole corpus: exact (normalized text hash), then MinHash-LSH near-dedup whose
    candidate pairs are verified exactly (`similarity`) before any cluster is merged. The survivor
    of a cluster is its smallest id."""

    exact: bool = True
    """Drop documents whose normalized text another document has (`dup_exact`)."""
    near: bool = True
    """Drop near duplicates (`dup_near`)."""
    shingle_words: int = Field(default=5, ge=1, le=16)
    """Words per shingle."""
    bands: int = Field(default=14, ge=1)
    """LSH bands; a pair is a candidate when one band matches."""
    rows_per_band: int = Field(default=8, ge=1)
    """MinHash values per band."""
    probe_half_bands: bool = True
    """Also propose the pairs whose MinHash values match on either half of a band (4 of 8 rows): more
    candidates to verify, none merged unverified; a pair at Jaccard 0.6 becomes a candidate with
    probability 0.98 instead of 0.16."""
    similarity: Literal["shared_words", "jaccard"] = "shared_words"
    """How a candidate pair is verified: shared_words, the share of the two documents' words inside a
    shingle the other also has (robust to edited spans); jaccard, the Jaccard of the two shingle sets."""
    threshold: float | None = Field(default=None, gt=0, le=1)
    """The similarity a candidate pair needs to count as a duplicate; default 0.85 for shared_words (at
    most ~15% of the words edited), 0.7 for jaccard (about where 14 × 8 LSH turns, (1/14)^(1/8))."""
    seed: int = 1
    """Picks the MinHash permutations."""
    verify_memory_mb: int = Field(default=256, ge=1)
    """Megabytes of shingles held at once while verifying pairs."""

    def similarity_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.85 if self.similarity == "shared_words" else 0.7


EvalSetKind = Literal["gsm8k", "mmlu", "arc"]


class EvalSetSpec(Schema):
    """One evaluation set to keep out of the training data."""

    kind: EvalSetKind
    """Its layout: gsm8k (jsonl), mmlu (csv folder) or arc (AI2 jsonl)."""
    path: str
    """A file or folder; a relative path is from the repo root."""
    name: str | None = None
    """What `decontam:<name>` says; default: the kind."""

    def label(self) -> str:
        return self.name or self.kind

    def resolved(self) -> Path:
        return (checkout_root() / Path(self.path).expanduser()).resolve()


class DecontamConfig(Schema):
    """Drop documents that share a long word n-gram (lowercased, punctuation stripped) with an
    evaluation set, so later scores mean something. No sets named: nothing is checked."""

    sets: list[EvalSetSpec] = []
    """The evaluation sets to keep out."""
    ngram_words: int = Field(default=13, ge=4, le=16)
    """Words per n-gram (GPT-3's decontamination used 13)."""


class MixingConfig(Schema):
    """Domain weights over the kept documents: a domain is repeated (weight above its share) or
    sampled down (below it), deterministically for a seed. No weights: no mixing. Domains the
    weights do not name keep all their documents and sit outside the mix."""

    weights: dict[str, float] = Field(default_factory=dict)
    """Domain → share of the mix, e.g. {web: 0.45}."""
    total_documents: int | None = Field(default=None, ge=1)
    """Documents of the mixed domains after mixing; default: as many as before."""
    seed: int = 0
    """Picks which documents are repeated or left out."""

    @model_validator(mode="after")
    def _positive_weights(self) -> MixingConfig:
        if any(w < 0 for w in self.weights.values()) or (self.weights and sum(self.weights.values()) <= 0):
            raise ValueError("mixing weights must be non-negative with a positive sum")
        return self


class DataConfig(Schema):
    """The data stage: raw text in, clean deduplicated parquet out."""

    inputs: list[InputSpec] = [InputSpec(path="embedded", domain="python-docs")]
    """What to read; `--input PATH` on the command line replaces it."""
    min_chars: int = Field(default=100, ge=0)
    """Documents shorter than this, in characters after normalization, are dropped (`too_short`)."""
    max_chars: int = Field(default=200_000, ge=1)
    """Documents longer than this, in characters, are dropped (`too_long`)."""
    filters: FilterConfig = FilterConfig()
    """Cleaning: boilerplate, language, quality rules, classifier, PII."""
    dedup: DedupConfig = DedupConfig()
    """Exact and near dedup over the whole corpus."""
    decontamination: DecontamConfig = DecontamConfig()
    """Evaluation sets kept out of the training data."""
    mixing: MixingConfig = MixingConfig()
    """Domain weights."""
    rows_per_shard: int = Field(default=20_000, ge=1)
    """Documents per parquet file of the output."""

    @model_validator(mode="after")
    def _one_quality_setting_per_domain(self) -> DataConfig:
        # The cleaning step knows a record's domain, not its input: a domain's inputs must agree.
        settings: dict[str, bool] = {}
        for spec in self.inputs:
            if settings.setdefault(spec.domain, spec.applies_quality_filters()) != spec.applies_quality_filters():
                raise ValueError(f"inputs of domain {spec.domain!r} disagree on quality_filters")
        return self
