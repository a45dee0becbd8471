"""DNA domain: FASTA/FASTQ files (plain or gzip) <-> nucleotide tokens, base accuracy.

A file holds many records; each record's sequence becomes its own token stream, cut into
windows of seq_len tokens (the last window of every record shorter; a window never spans two
records). Everything that is not the predicted base letters is kept as JSON side information,
so `write` rebuilds the file byte for byte up to the bases the model gets wrong:

- the exact header lines (id and description), the line layout of every record (the length of
  each sequence line, run-length encoded), the line ending (LF or CRLF) and the final newline;
- soft-masking: lower-case runs, run-length encoded (the model sees case-folded bases);
- the exact letter of every rare IUPAC code (R Y S W K M B D H V U), which the model sees as one
  "other" token;
- FASTQ: the quality strings (zlib + base64) and '+' lines, unless `drop_qualities` is set, in
  which case the side information describes a FASTA file and `write` produces FASTA.

Tokens (k = 1, the default): PAD=0 (never produced by `read`), A=1, C=2, G=3, T=4, N=5, OTHER=6.
With k > 1, a record is cut into non-overlapping k-base chunks: a chunk of k plain A/C/G/T
bases is one of 4^k k-mer tokens (ids 2 .. 4^k + 1), anything else (an N, a rare IUPAC code, or
the record's last chunk when shorter than k) is MIXED=1 and its exact bases are side information.
docs/dna.md describes the layout and every edge case.
"""

from __future__ import annotations

import base64
import gzip
import io
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqcompress.atomic import atomic_open
from seqcompress.domain import Domain, check_data_paths, decode_utf8, split_windows
from seqcompress.errors import FormatError, InputError
from seqcompress.format import run_length

# ---- alphabet and tokens ------------------------------------------------------------------------
PAD_ID = 0
OTHER_ID = 6  # k = 1: any rare IUPAC code; the letter itself is side information
MIXED_ID = 1  # k > 1: a chunk that is not k plain A/C/G/T bases; its bases are side information
KMER_OFFSET = 2  # k > 1: k-mer index i (base-4 digits A=0 C=1 G=2 T=3) is token i + 2
MAX_K = 6
RARE_IUPAC = "RYSWKMBDHVU"  # IUPAC nucleotide codes other than A C G T N (U: uracil)

# Internal base code of every byte: A=0 C=1 G=2 T=3 N=4, rare IUPAC=5, anything else invalid.
_N, _RARE, _INVALID = 4, 5, 255
_CODE = np.full(256, _INVALID, dtype=np.uint8)
for _code, _letters in enumerate(["A", "C", "G", "T", "N", RARE_IUPAC]):
    for _letter in _letters:
        _CODE[ord(_letter)] = _CODE[ord(_letter.lower())] = _code
_UPPER = np.uint8(0xDF)  # clears the ASCII case bit: valid bytes are all letters
_LOWER = np.uint8(0x20)

_COMPRESSED_MAGIC = {  # formats people try that `read` does not unpack: say so instead of "not FASTA"
    b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip",
}


def sample_path() -> Path:
    """The bundled sample: four slices of S. cerevisiae chromosome I (230 kbp, gzip FASTA)."""
    return Path(str(resources.files("seqcompress") / "data" / "yeast_sample.fa.gz"))


# ---- files -> records ---------------------------------------------------------------------------
@dataclass
class Record:
    """One FASTA/FASTQ record exactly as written in the file, line breaks removed."""

    title: str  # the header line after '>' or '@', unchanged (id and description)
    bases: bytes  # the sequence, case kept
    lines: list[int]  # the length of each sequence line (0 for a blank line)
    plus: str | None = None  # FASTQ: the text after '+' (empty, or the title repeated)
    quality: bytes | None = None  # FASTQ: the quality string
    quality_lines: list[int] = field(default_factory=list)  # FASTQ: the length of each quality line


@dataclass
class ParsedFile:
    format: str  # "fasta" or "fastq"
    newline: str  # "\n" or "\r\n"
    final_newline: bool  # whether the last line ends with a line break
    records: list[Record]


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic 1f 8b."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path} is damaged gzip data ({exc})") from None
    for magic, kind in _COMPRESSED_MAGIC.items():
        if data.startswith(magic):
            raise InputError(f"{path} is {kind}-compressed; only plain or gzip FASTA/FASTQ is read, "
                             f"so decompress it first")
    return data


def decode_text(path: Path, data: bytes) -> tuple[str, str]:
    """Text with LF line breaks and the file's own line ending ("\\n" or "\\r\\n")."""
    text = decode_utf8(path, data, "FASTA or FASTQ")
    newline = "\n"
    crlf = text.count("\r\n")
    if crlf:
        if crlf != text.count("\n"):
            raise InputError(f"{path} mixes Windows (CRLF) and Unix (LF) line endings; convert it to one style first")
        text, newline = text.replace("\r\n", "\n"), "\r\n"
    if "\r" in text:
        raise InputError(f"{path} has a carriage return that does not end a line (old Mac line endings?); "
                         f"convert it to LF")
    return text, newline


def parse_file(path: Path) -> ParsedFile:
    """Parse a FASTA or FASTQ file (plain or gzip) into records that keep every byte of the layout.

    Biopython splits the records; a walk over the raw lines in step with it records each record's line
    layout, and both must agree on every title and sequence, so nothing is silently dropped.
    """
    text, newline = decode_text(path, read_bytes(path))
    final_newline = text.endswith("\n")
    lines = text.split("\n")
    if final_newline:
        lines.pop()  # split leaves "" after the last line break
    marker = lines[0][:1]
    if marker == ">":
        records, kind = _fasta_records(path, text, lines), "fasta"
    elif marker == "@":
        records, kind = _fastq_records(path, text, lines), "fastq"
    else:
        raise InputError(f"{path} is not FASTA or FASTQ: its first line should start with '>' or '@', "
                         f"not {lines[0][:20]!r}")
    return ParsedFile(kind, newline, final_newline, records)


def _fasta_records(path: Path, text: str, lines: list[str]) -> list[Record]:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    records, i = [], 0
    for title, seq in SimpleFastaParser(io.StringIO(text)):
        j = i + 1
        while j < len(lines) and not lines[j].startswith(">"):
            j += 1
        body = lines[i + 1 : j]
        record = Record(lines[i][1:], _check_bases(path, lines[i][1:], body, i + 2), [len(x) for x in body])
        _check_agrees(path, record, title, seq, i + 1)
        records.append(record)
        i = j
    if i != len(lines):  # cannot happen while Biopython and this walk agree on where records start
        raise InputError(f"{path}, line {i + 1}: could not split the file into FASTA records")
    return records


def _fastq_records(path: Path, text: str, lines: list[str]) -> list[Record]:
    from Bio.SeqIO.QualityIO import FastqGeneralIterator

    records, i = [], 0
    try:
        for title, seq, quality in FastqGeneralIterator(io.StringIO(text)):
            j = i + 1
            while not lines[j].startswith("+"):  # Biopython has checked that a '+' line follows
                j += 1
            body, plus = lines[i + 1 : j], lines[j][1:]
            j += 1
            q_start, q_len = j, 0
            # Biopython's rule: a line starting with '@' opens the next record once the quality is complete.
            while j < len(lines) and not (lines[j].startswith("@") and q_len >= len(seq)):
                q_len += len(lines[j])
                j += 1
            q_body = lines[q_start:j]
            q_text = "".join(q_body)
            if q_text != quality or not all(33 <= ord(c) <= 126 for c in set(q_text)):
                raise InputError(f"{path}, line {q_start + 1}: the quality of record {_name(title)} has "
                                 f"characters outside '!'..'~' or spaces")
            record = Record(lines[i][1:], _check_bases(path, lines[i][1:], body, i + 2), [len(x) for x in body],
                            plus=plus, quality=q_text.encode("ascii"), quality_lines=[len(x) for x in q_body])
            _check_agrees(path, record, title, seq, i + 1)
            records.append(record)
            i = j
    except ValueError as exc:  # Biopython's description of a broken FASTQ file
        raise InputError(f"{path} is not valid FASTQ: {str(exc).rstrip('.')}") from None
    return records


def _check_bases(path: Path, title: str, body: list[str], first_line: int) -> bytes:
    """The record's sequence as bytes, or an InputError naming the first non-IUPAC character and its line."""
    raw = "".join(body).encode("utf-8")
    bad = np.flatnonzero(_CODE[np.frombuffer(raw, dtype=np.uint8)] == _INVALID)
    if bad.size == 0:
        return raw
    pos = int(bad[0])  # every byte before it is ASCII, so it is also the character index
    line = first_line + int(np.searchsorted(np.cumsum([len(x) for x in body]), pos, side="right"))
    char = "".join(body)[pos]
    raise InputError(f"{path}, line {line}: {char!r} in record {_name(title)} is not an IUPAC nucleotide code; "
                     f"{_why_invalid(char)}")


def _name(title: str) -> str:
    """A record's id (the first word of its title) for messages."""
    return repr(title.split()[0]) if title.split() else "(no id)"


def _why_invalid(char: str) -> str:
    if char.isdigit():
        return "numbered sequence lines (GenBank style) are not FASTA"
    if char in "-.":
        return "alignment gaps are not supported, remove them first"
    if char == "*":
        return "'*' is a stop codon or terminator, not a nucleotide"
    if char in " \t\v\f":
        return "spaces or tabs inside sequence lines are not allowed"
    if char.isalpha() and char.isascii():
        return "only A C G T N and R Y S W K M B D H V U are read (is this a protein sequence?)"
    return "only A C G T N and R Y S W K M B D H V U are read"


def _check_agrees(path: Path, record: Record, title: str, seq: str, line: int) -> None:
    if record.title.rstrip() != title or record.bases.decode("ascii") != seq:
        raise InputError(f"{path}, line {line}: record {_name(title)} parses ambiguously; "
                         f"check its header and sequence lines")


# ---- run-length helpers ---------------------------------------------------------------------------
def case_runs(bases: np.ndarray) -> list[int]:
    """Alternating run lengths of upper- and lower-case letters, starting with an upper-case run
    (0 when the record starts lower-case): "ACgtA" -> [2, 2, 1]. Empty when there is no lower case."""
    lower = (bases & _LOWER) != 0  # (L,) bool
    if not lower.any():
        return []
    change = np.flatnonzero(lower[1:] != lower[:-1]) + 1
    bounds = np.concatenate(([0], change, [len(bases)]))
    runs = np.diff(bounds).tolist()
    return ([0] if lower[0] else []) + runs


def exact_runs(units: np.ndarray, marked: np.ndarray, k: int) -> list[list]:
    """Runs of identical marked units as [first base, repeat, unit string]: units (U, k) upper-case
    bytes, marked (U,) bool. Units are single bases (k = 1) or k-base chunks (k > 1)."""
    if not marked.any():
        return []
    key = np.where(marked[:, None], units, 0)  # (U, k): unmarked units become 0 and break no run
    starts = np.concatenate(([0], np.flatnonzero((key[1:] != key[:-1]).any(axis=1)) + 1))
    ends = np.concatenate((starts[1:], [len(units)]))
    return [[int(s) * k, int(e - s), units[s].tobytes().decode("ascii")]
            for s, e in zip(starts, ends) if marked[s]]


def layout_lines(data: np.ndarray, runs: list[list[int]], newline: bytes) -> bytes:
    """Bytes (L,) cut into lines of the run-length encoded lengths, each followed by `newline`."""
    if sum(w * n for w, n in runs) != len(data):
        raise FormatError("dna side information: a record's line lengths do not add up to its length")
    out, pos = [], 0
    nl = np.frombuffer(newline, dtype=np.uint8)
    for width, count in runs:
        block = data[pos : pos + width * count].reshape(count, width)  # (lines, width)
        out.append(np.concatenate([block, np.broadcast_to(nl, (count, len(nl)))], axis=1).tobytes())
        pos += width * count
    return b"".join(out)


# ---- the domain -------------------------------------------------------------------------------------
class DnaDomain(Domain):
    name = "dna"
    metric_name = "base_accuracy"
    default_seq_len = 512
    output_suffix = ".fasta"

    def __init__(self, k: int = 1, drop_qualities: bool = False) -> None:
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k-mer size must be an integer from 1 to {MAX_K}, got {k!r}")
        self.k = k
        self.drop_qualities = drop_qualities  # FASTQ: keep no qualities, `write` then produces FASTA
        self.vocab_size = 7 if k == 1 else KMER_OFFSET + 4**k
        # Letters each token writes (V, k); the side information overrides OTHER/MIXED positions.
        # PAD, OTHER and MIXED write N: only a misprediction leaves one there.
        letters = np.full((self.vocab_size, k), ord("N"), dtype=np.uint8)
        codes = np.full((self.vocab_size, k), -1, dtype=np.int64)  # base code per token position, -1: none
        if k == 1:
            letters[1:6, 0] = np.frombuffer(b"ACGTN", dtype=np.uint8)
            codes[1:5, 0] = np.arange(4)
        else:
            index = np.arange(4**k)
            digits = (index[:, None] // 4 ** np.arange(k - 1, -1, -1)[None, :]) % 4  # (4^k, k), first base first
            letters[KMER_OFFSET:] = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
            codes[KMER_OFFSET:] = digits
        self._letters = letters
        self._codes = torch.from_numpy(codes)

    # ---- state ---------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def state(self) -> dict:
        tokens = "PAD A C G T N OTHER" if self.k == 1 else f"PAD MIXED then the {4**self.k} {self.k}-mers"
        return {"name": self.name, "k": self.k, "vocab_size": self.vocab_size, "tokens": tokens}

    @classmethod
    def from_state(cls, state: dict) -> "DnaDomain":
        return cls(k=int(state.get("k", 1)), drop_qualities=bool(state.get("drop_qualities", False)))

    def default_data(self) -> list[Path]:
        return [sample_path()]

    def size_references(self) -> dict[str, float]:
        return {"2-bit packing of A/C/G/T": 2.0}

    def decode_note(self, side: dict) -> str | None:
        if side.get("qualities_dropped"):
            return "the input was FASTQ encoded with --drop-qualities: the output is FASTA, without quality strings"
        return None

    # ---- bases <-> tokens -------------------------------------------------------------------------
    def tokenize(self, bases: bytes) -> tuple[np.ndarray, list[list]]:
        """A record's bases (L bytes, any case) -> its tokens (ceil(L / k),) int64 and the exact runs:
        [first base, repeat, unit] for every base (k = 1) or chunk (k > 1) the tokens do not spell out."""
        raw = np.frombuffer(bases, dtype=np.uint8)
        codes = _CODE[raw].astype(np.int64)  # (L,), validated by the parser: no _INVALID
        upper = raw & _UPPER
        k = self.k
        if k == 1:
            return codes + 1, exact_runs(upper[:, None], codes == _RARE, 1)
        full = len(raw) // k
        chunks = codes[: full * k].reshape(full, k)  # (L // k, k)
        pure = (chunks < 4).all(axis=1)
        # (L // k,) k-mer index, first base most significant; N/IUPAC codes clipped (their chunks are MIXED anyway)
        index = chunks.clip(max=3) @ (4 ** np.arange(k - 1, -1, -1))
        tokens = np.where(pure, index + KMER_OFFSET, MIXED_ID)
        runs = exact_runs(upper[: full * k].reshape(full, k), ~pure, k)
        if len(raw) > full * k:  # the last, shorter chunk: always MIXED, bases kept exactly
            tokens = np.append(tokens, MIXED_ID)
            runs.append([full * k, 1, upper[full * k :].tobytes().decode("ascii")])
        return tokens, runs

    def spell(self, tokens: np.ndarray, length: int, runs: list[list]) -> np.ndarray:
        """Tokens (T,) -> upper-case bases (length,) uint8, with the exact runs written over them."""
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise FormatError(f"dna tokens must lie in [0, {self.vocab_size})")
        out = self._letters[tokens].reshape(-1).copy()  # (T * k,) >= length
        for start, repeat, unit in runs:
            end = start + repeat * len(unit)
            if not 0 <= start <= end <= len(out):
                raise FormatError("dna side information: an IUPAC run lies outside its record")
            out[start:end] = np.frombuffer((unit * repeat).encode("ascii"), dtype=np.uint8)
        return out[:length]

    def token_count(self, length: int) -> int:
        return -(-length // self.k)

    # ---- files -------------------------------------------------------------------------------------
    def read(self, path: Path, seq_len: int) -> tuple[list[torch.Tensor], dict]:
        """Windows (L,) of each record's tokens, and the side information `write` needs (docs/dna.md)."""
        path = Path(path)
        check_data_paths([path])
        parsed = parse_file(path)
        fastq = parsed.format == "fastq"
        keep_quality = fastq and not self.drop_qualities
        windows: list[torch.Tensor] = []
        side: dict = {
            "format": "fastq" if keep_quality else "fasta",  # what `write` produces
            "source_format": parsed.format,
            "qualities_dropped": fastq and self.drop_qualities,
            "k": self.k,
            "newline": parsed.newline,
            "final_newline": parsed.final_newline,
            "titles": [], "lengths": [], "lines": [], "lower": [], "exact": [],
        }
        if keep_quality:
            side.update(plus=[], quality_lines=[])
        for record in parsed.records:
            tokens, runs = self.tokenize(record.bases)
            windows += split_windows(torch.from_numpy(tokens), seq_len)
            side["titles"].append(record.title)
            side["lengths"].append(len(record.bases))
            side["lines"].append(run_length(record.lines))
            side["lower"].append(case_runs(np.frombuffer(record.bases, dtype=np.uint8)))
            side["exact"].append(runs)
            if keep_quality:
                # 0: a bare '+', 1: '+' and the title again, else the text after '+' as it is
                side["plus"].append(0 if record.plus == "" else 1 if record.plus == record.title else record.plus)
                side["quality_lines"].append(run_length(record.quality_lines))
        if keep_quality:
            joined = b"".join(r.quality for r in parsed.records)
            side["qualities"] = base64.b64encode(zlib.compress(joined, 9)).decode("ascii")
        if not windows:
            raise InputError(f"{path}: its {len(parsed.records)} record(s) hold no bases")
        return windows, side

    def write(self, path: Path, windows: list[torch.Tensor], side: dict) -> None:
        """Rebuild the file from predicted token windows (in `read` order) and the side information; gzip
        when `path` ends in .gz. Every record's bases are spelled out, IUPAC runs and case applied, then
        laid out in the record's own lines."""
        try:
            data = self._rebuild(windows, side)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, zlib.error) as exc:
            raise FormatError(f"dna side information is malformed ({type(exc).__name__}: {exc})") from None
        if Path(path).name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        with atomic_open(path, "wb") as handle:
            handle.write(data)

    def _rebuild(self, windows: list[torch.Tensor], side: dict) -> bytes:
        if side["k"] != self.k:
            raise FormatError(f"the latents hold k={side['k']} tokens but this dna domain uses k={self.k}")
        tokens = torch.cat(windows).numpy().astype(np.int64) if windows else np.zeros(0, dtype=np.int64)
        lengths = [int(n) for n in side["lengths"]]
        if sum(self.token_count(n) for n in lengths) != len(tokens):
            raise FormatError(f"dna side information describes {sum(lengths)} bases "
                              f"but {len(tokens)} tokens were decoded")
        fastq = side["format"] == "fastq"
        newline = side["newline"].encode("ascii")
        if newline not in (b"\n", b"\r\n"):
            raise FormatError("dna side information: the line ending must be LF or CRLF")
        qualities = zlib.decompress(base64.b64decode(side["qualities"])) if fastq else b""
        out, start, q_start = [], 0, 0
        for r, length in enumerate(lengths):
            title = side["titles"][r]
            count = self.token_count(length)
            bases = self.spell(tokens[start : start + count], length, side["exact"][r])
            start += count
            self._apply_case(bases, side["lower"][r])
            out.append(("@" if fastq else ">").encode("utf-8") + title.encode("utf-8") + newline)
            out.append(layout_lines(bases, side["lines"][r], newline))
            if fastq:
                plus = side["plus"][r]
                out.append(b"+" + ("" if plus == 0 else title if plus == 1 else plus).encode("utf-8") + newline)
                quality = np.frombuffer(qualities[q_start : q_start + length], dtype=np.uint8)
                q_start += length
                out.append(layout_lines(quality, side["quality_lines"][r], newline))
        if fastq and q_start != len(qualities):
            raise FormatError("dna side information: the qualities do not match the record lengths")
        data = b"".join(out)
        return data if side["final_newline"] else data[: len(data) - len(newline)]

    @staticmethod
    def _apply_case(bases: np.ndarray, runs: list[int]) -> None:
        """Lower-case, in place, the odd runs of the alternating upper/lower run lengths."""
        if runs and sum(runs) != len(bases):
            raise FormatError("dna side information: a record's case runs do not add up to its length")
        pos = 0
        for i, n in enumerate(runs):
            if i % 2:
                bases[pos : pos + n] |= _LOWER
            pos += n

    # ---- training and evaluation ----------------------------------------------------------------
    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # output (B, N, V) logits, target (B, N) ids, mask (B, N): cross-entropy over real positions only.
        target = target.masked_fill(~mask, -100)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1), ignore_index=-100)

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        # (B, N, V) logits -> (B, N) ids. PAD is never a real token, so it is never predicted.
        return output[..., 1:].argmax(dim=-1) + 1

    def metric_totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Sums over real positions. A base counts as correct when the written file gets it right: rare
        IUPAC codes (k = 1) and MIXED chunks (k > 1) are restored from side information whatever the
        model predicts there."""
        pred = self.prediction(output)  # (B, N)
        token_ok = (pred == target) & mask
        codes = self._codes.to(target.device)
        true_codes, pred_codes = codes[target], codes[pred]  # (B, N, k), -1 where a token spells no A/C/G/T
        acgt = (true_codes >= 0) & mask[..., None]  # (B, N, k)
        acgt_ok = acgt & (true_codes == pred_codes)
        side_exact = (target == (OTHER_ID if self.k == 1 else MIXED_ID)) & mask  # (B, N)
        if self.k == 1:
            base_ok = token_ok | side_exact  # N is a token: right only when predicted
        else:
            base_ok = acgt_ok.sum(-1) + side_exact * self.k  # bases right per token, (B, N)
        return {
            "correct_bases": float(base_ok.sum()),
            "bases": float(mask.sum()) * self.k,
            "correct_acgt": float(acgt_ok.sum()),
            "acgt": float(acgt.sum()),
            "correct_tokens": float(token_ok.sum()),
            "tokens": float(mask.sum()),
        }

    def metric_values(self, totals: dict[str, float]) -> dict[str, float]:
        return {
            self.metric_name: totals["correct_bases"] / max(totals["bases"], 1.0),
            "acgt_accuracy": totals["correct_acgt"] / max(totals["acgt"], 1.0),
            "token_accuracy": totals["correct_tokens"] / max(totals["tokens"], 1.0),
        }

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """The window's bases; '?' where the letter lives in side information (OTHER, MIXED)."""
        ids = window.long().clamp(0, self.vocab_size - 1).numpy()
        letters = self._letters[ids].copy()  # (N, k)
        letters[(ids == (OTHER_ID if self.k == 1 else MIXED_ID)) | (ids == PAD_ID)] = ord("?")
        text = letters.tobytes().decode("ascii")
        return text if len(text) <= limit else text[: limit - 3] + "..."
