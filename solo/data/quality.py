"""Web-text quality rules as FineWeb ran them (datatrove's defaults), as plain functions over text.

Each family returns the first rule a document trips, as `family:rule` (e.g.
`gopher_quality:word_count`), or "" when it passes; C4 also removes lines, so it returns the
text it keeps. Functions take the document's words once (`words(text)`) so families share one
tokenization, and allocate no per-document objects beyond lists of strings.

Words come from our own tokenizer, shaped on spaCy's blank English tokenizer that datatrove uses
(whitespace chunks; punctuation split off the front and back; `n't`/`'s` split; units after
numbers, `°`, hyphens between letters split; URLs, e-mails, `U.S.A.`, `3.5`, common abbreviations
kept whole), and C4's sentence count follows spaCy's sentencizer, so nothing is downloaded (no
spaCy model, no nltk data). Where we differ from datatrove: spaCy's exception table is far longer
than our short lists (abbreviations, emoticons, contractions), its letter classes are per
script where we use Python's word characters, and the line-end marks below cover the common
scripts, not all of Unicode's. A word count that differs changes a decision only at a threshold: on 1,970 real pages
every decision agreed (benchmarks/results/data_filters_agreement.md).
"""

from __future__ import annotations

import re
import unicodedata

from solo.data.config import C4Config, FilterConfig, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig

# Punctuation split off the front and the back of a whitespace-separated chunk, one at a time.
_PREFIX = re.compile(r"\.\.+|……|''|[§%=—–…,:;!?¿¡()\[\]{}<>_#*&。？！，、；：～·\'\"”“`‘´’‚„»«"
                     r"「」『』（）【】《》$£€¥¦©®°]"
                     r"|\+(?!\d)")
_UPPER = "A-ZÀ-ÖØ-ÞĀĂĄĆČĎĐĒĘĚĞĪŁŃŇŌŐŒŘŚŠŞŢŤŪŮŰŹŻŽА-ЯЁΑ-Ω"
_SUFFIX = re.compile(
    r"(?:\.\.+|……|''|\):|[…,:;!?¿¡()\[\]{}<>_#*&。？！，、；：～·\'\"”“`‘´’‚„»«「」『』（）【】《》—–¦©®°]|['’][sS]"
    r"|(?<=\d)(?:[+$£€¥%]|am|pm|km|cm|mm|m|kg|mg|g|lb|oz|ft|mph|GB|MB|KB|TB|gb|mb|kb|G|M|K|T)"  # 5kg, 16GB
    rf"|(?<=[^\W_{_UPPER}]|[)\]\"'”’%»«“‘\u0300-\u036f\u0900-\u0dff])\.|(?<=[{_UPPER}][{_UPPER}]|°[FfCcKk])\.)$"
)
# Split inside what is left: ellipses, symbols, 1-2, a.B, a,b, letter-hyphen-letter, a/b, a:b, a=b.
_INFIX = re.compile(
    rf"\.\.+|…|[¦©®°]|(?<=\d)[+\-*^](?=[\d-])|(?<=[a-zß-öø-ÿа-я])\.(?=[{_UPPER}])|(?<=[^\W\d_]),(?=[^\W\d_])"
    r"|(?<=[^\W_\u0530-\u058f])(?:---|--|——|-|–|—|~)(?=[^\W\d_\u0530-\u058f])"  # spaCy leaves Armenian be
    r"|(?<=[^\W_])[:<>=/](?=[^\W\d_])"
)
_WHOLE = re.compile(
    r"(?:https?://|www\.)\S*[^\s.,;:!?)\]\"'>]|[\w.+-]+@\w[\w-]*(?:\.[\w-]+)+"  # URLs, e-mail addresses
    r"|(?:[A-Za-z]\.)+|Ph\.D\.|[:;]-?[()DPp]|<3|\(:|\):"  # U.S.A., emoticons
    r"|(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Inc|Ltd|Co|Corp|vs|Mt|Gov|Sen|Rep|Bros"
    r"|Ala|Ariz|Ark|Calif|Colo|Conn|Del|Fla|Ga|Ill|Ind|Kan|Ky|La|Md|Mass|Mich|Minn|Miss|Mo|Mont|Neb|Nev|Okla|Ore|Pa"
    r"|Tenn|Va|Wash|Wis|Wyo"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Oct|Nov|Dec)\."
)
_NOT = re.compile(r"(?i)^(\w+)(n['’]t)$")  # do|n't
_PRONOUN_CONTRACTION = re.compile(
    r"(?i)^(i|you|he|she|it|we|they|who|what|that|there|where|how|why|when)(['’](?:re|ve|ll|d|m))$")
_RUN_TOGETHER = re.compile(r"(?i)^(do|does|did|is|are|was|were|have|has|had|could|would|should|must|need|ca|wo)(nt)$")
# Words spaCy's English exceptions split although nothing marks them.
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "im": ("i", "m"), "Im": ("I", "m"), "Cannot": ("Can", "not"), "ive": ("i", "ve"),
                "youre": ("you", "re")}


def _split_chunk(chunk: str, out: list[str]) -> None:
    suffixes: list[str] = []
    while chunk:
        if _WHOLE.fullmatch(chunk):
            break
        m = _PREFIX.match(chunk)
        if m and m.end() < len(chunk) or m and not suffixes and len(chunk) == m.end():
            out.append(m.group())
            chunk = chunk[m.end():]
            continue
        m = _SUFFIX.search(chunk)
        if m and m.start() > 0:
            suffixes.append(m.group())
            chunk = chunk[:m.start()]
            continue
        break
    if chunk:
        if _WHOLE.fullmatch(chunk):
            out.append(chunk)
        else:
            position = 0
            for m in _INFIX.finditer(chunk):
                if m.start() > position:
                    _append_word(chunk[position:m.start()], out)
                out.append(m.group())
                position = m.end()
            if position < len(chunk):
                _append_word(chunk[position:], out)
    out.extend(reversed(suffixes))


def _append_word(word: str, out: list[str]) -> None:
    if word in _SPLIT_WORDS:
        out.extend(_SPLIT_WORDS[word])
        return
    m = _NOT.match(word) or _PRONOUN_CONTRACTION.match(word) or _RUN_TOGETHER.match(word)
    if m:
        out.extend(m.groups())
    else:
        out.append(word)


# datatrove's punctuation: a word made only of these is a symbol, not a word.
PUNCTUATION = set(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(chr(x) for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))
)
# Sentence and line ends (datatrove's TERMINAL_PUNCTUATION, cut to the scripts we expect).
TERMINAL_PUNCTUATION = tuple(".!?。！？｡．﹒﹗︕︖؟۔।॥։።፧፨")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
# Tokens that end a sentence, as spaCy's sentencizer has them (the Latin, CJK, Arabic and Indic ones).
_SENTENCE_ENDS = frozenset(".!?։؟۔܀܁܂߹।॥၊။።፧፨‼‽⁇⁈⁉⸮⸼。﹒﹖﹗！．？｡")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def words(text: str) -> list[str]:
    out: list[str] = []
    for chunk in text.split():
        if (chunk.isalpha() or chunk.isdigit()) and chunk not in _SPLIT_WORDS and chunk[-2:] not in ("nt", "NT"):
            out.append(chunk)  # most chunks: nothing to split
        else:
            _split_chunk(chunk, out)
    return out


def gopher_quality(text: str, tokens: list[str], c: GopherQualityConfig) -> str:
    n_words = len(tokens)
    real_words = [w for w in tokens if not PUNCTUATION.issuperset(w)]
    if c.min_doc_words is not None and len(real_words) < c.min_doc_words:
        return "gopher_quality:word_count"
    if c.max_doc_words is not None and len(real_words) > c.max_doc_words:
        return "gopher_quality:word_count"
    if not real_words:  # every rule below is a ratio over words
        return "gopher_quality:word_count"
    mean_length = sum(map(len, real_words)) / len(real_words)
    if c.min_avg_word_length is not None and mean_length < c.min_avg_word_length:
        return "gopher_quality:mean_word_length"
    if c.max_avg_word_length is not None and mean_length > c.max_avg_word_length:
        return "gopher_quality:mean_word_length"
    if c.max_symbol_word_ratio is not None:
        if text.count("#") / n_words > c.max_symbol_word_ratio:
            return "gopher_quality:hash_ratio"
        if (text.count("...") + text.count("…")) / n_words > c.max_symbol_word_ratio:
            return "gopher_quality:ellipsis_ratio"
    lines = text.splitlines() or [""]
    if c.max_bullet_lines_ratio is not None:
        bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > c.max_bullet_lines_ratio:
            return "gopher_quality:bullet_lines"
    if c.max_ellipsis_lines_ratio is not None:
        ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
        if ellipses / len(lines) > c.max_ellipsis_lines_ratio:
            return "gopher_quality:ellipsis_lines"
    if c.min_alpha_words_ratio is not None:
        alpha = sum(1 for w in tokens if any(ch.isalpha() for ch in w))
        if alpha / n_words < c.min_alpha_words_ratio:
            return "gopher_quality:alpha_words"
    if c.min_stop_words is not None and len(set(c.stop_words).intersection(tokens)) < c.min_stop_words:
        return "gopher_quality:stop_words"
    return ""


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """How many parts repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count, chars


def _top_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters of the most frequent n-gram times its count (first seen wins a tie, as Counter does)."""
    counts: dict[str, int] = {}
    for i in range(len(tokens) - n + 1):
        gram = " ".join(tokens[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    best, best_count = "", 0
    for gram, count in counts.items():
        if count > best_count:
            best, best_count = gram, count
    return len(best) * best_count


def _duplicated_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one, skipping past each repeat (no overlaps)."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(tokens) - n + 1:
        gram = "".join(tokens[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def gopher_repetition(text: str, tokens: list[str], c: GopherRepetitionConfig) -> str:
    if not text:
        return "gopher_repetition:empty"
    paragraphs = _PARAGRAPHS.split(text.strip())
    count, chars = _duplicates(paragraphs)
    if c.dup_para_frac is not None and count / len(paragraphs) > c.dup_para_frac:
        return "gopher_repetition:dup_para_frac"
    if c.dup_para_char_frac is not None and chars / len(text) > c.dup_para_char_frac:
        return "gopher_repetition:dup_para_char_frac"
    lines = _LINES.split(text)
    count, chars = _duplicates(lines)
    if c.dup_line_frac is not None and count / len(lines) > c.dup_line_frac:
        return "gopher_repetition:dup_line_frac"
    if c.dup_line_char_frac is not None and chars / len(text) > c.dup_line_char_frac:
        return "gopher_repetition:dup_line_char_frac"
    for n, limit in sorted(c.top_n_grams.items()):
        if len(tokens) >= n and _top_ngram_chars(tokens, n) / len(text) > limit:
            return f"gopher_repetition:top_{n}_gram"
    for n, limit in sorted(c.dup_n_grams.items()):
        if _duplicated_ngram_chars(tokens, n) / len(text) > limit:
            return f"gopher_repetition:duplicated_{n}_grams"
    return ""


def _sentences(line: str) -> int:
    """A sentence starts at the first word after an end mark (spaCy's sentencizer rule)."""
    tokens = words(line)
    count, after_end = (1 if tokens else 0), False
    for token in tokens:
        if token in _SENTENCE_ENDS:
            after_end = True
        elif after_end and not all(unicodedata.category(ch).startswith("P") for ch in token):
            count += 1
            after_end = False
    return count


def c4(text: str, c: C4Config) -> tuple[str, str]:
    """(kept text, reason): C4's line rules remove lines; its page rules drop the document."""
    kept: list[str] = []
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        split = line.split()
        if c.max_word_length is not None and any(len(w) > c.max_word_length for w in split):
            continue
        if c.remove_citations:
            line = _CITATION.sub("", line)
        if c.filter_no_terminal_punct and (not line.endswith((".", "?", "!", '"', "'")) or line.endswith("...")):
            continue
        if c.min_words_per_line is not None and len(split) < c.min_words_per_line:
            continue
        lower = line.lower()
        if c.filter_lorem_ipsum and "lorem ipsum" in lower:
            return text, "c4:lorem_ipsum"
        if c.filter_javascript and "javascript" in lower:
            continue
        if c.filter_curly_bracket and "{" in line:
            return text, "c4:curly_bracket"
        if c.filter_policy and any(p in lower for p in _POLICY):
            continue
        sentences += _sentences(line)
        kept.append(line)
    if c.min_num_sentences is not None and sentences < c.min_num_sentences:
        return text, "c4:too_few_sentences"
    return "\n".join(kept).strip(), ""


def fineweb(text: str, tokens: list[str], c: FineWebConfig) -> str:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb:empty"
    if c.line_punct_thr is not None:
        ratio = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION)) / len(lines)
        if ratio < c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
            return "fineweb:line_punct_ratio"
    if c.short_line_thr is not None:
        short = sum(1 for line in lines if len(line) <= c.short_line_length)
        if short / len(lines) > c.short_line_thr:
            return "fineweb:short_line_ratio"
    if c.char_duplicates_ratio is not None:
        if _duplicates(lines)[1] / max(1, len(text) - text.count("\n")) > c.char_duplicates_ratio:
            return "fineweb:char_dup_ratio"
    if c.new_line_ratio is not None and text.count("\n") / max(1, len(tokens)) > c.new_line_ratio:
        return "fineweb:list_ratio"
    return ""


def apply(text: str, f: FilterConfig) -> tuple[str, str]:
    """(text, reason) after the enabled families in FineWeb's order; C4 may remove lines first."""
    tokens = words(text)
    if f.gopher_repetition.enabled and (reason := gopher_repetition(text, tokens, f.gopher_repetition)):
        return text, reason
    if f.gopher_quality.enabled and (reason := gopher_quality(text, tokens, f.gopher_quality)):
        return text, reason
    if f.c4.enabled:
        kept, reason = c4(text, f.c4)
        if reason:
            return text, reason
        if kept != text:
            text, tokens = kept, words(kept)
    if f.fineweb.enabled and (reason := fineweb(text, tokens, f.fineweb)):
        return text, reason
    return text, ""
