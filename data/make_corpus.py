"""Build the demo corpus in data/corpus/ from public-domain English text shipped in Debian packages.

Sources (both public domain, see data/corpus/SOURCES.md):

* the Jargon File 4.4.7 (Debian package ``jargon-text``), plain text;
* the World English Bible (Debian package ``sword-text-web``), a SWORD zText module
  (zlib-compressed OSIS XML), read here directly so no SWORD library is needed.

The output is deterministic: the same package files give byte-identical train/valid/test
files. Text is cut into chunks of whole paragraphs (about ``CHUNK_BYTES`` each) and each chunk
goes to a split by a hash of its source and index, so the held-out splits are spread over the
whole corpus but never share a paragraph with the training split.

Usage::

    apt-get install jargon-text sword-text-web        # or: apt-get download + dpkg-deb -x DIR
    python data/make_corpus.py [--root /] [--out data/corpus]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import struct
import zlib
from pathlib import Path

JARGON = "usr/share/doc/jargon-text/jargon.txt.gz"
WEB_DIR = "usr/share/sword/modules/texts/ztext/engWEB2015eb"
CHUNK_BYTES = 4096
# Per-mille shares of the held-out splits; the rest is training text.
VALID_PERMILLE = 50
TEST_PERMILLE = 50
# The World English Bible is larger than the Jargon File; keep every WEB_KEEP-th chunk of it
# so that the corpus stays a few MB and both sources carry weight.
WEB_KEEP = 2


def jargon_text(root: Path) -> str:
    """Return the Jargon File as plain text with trailing spaces removed."""
    raw = gzip.decompress((root / JARGON).read_bytes()).decode("utf-8")
    # No-break spaces only keep the file's ASCII-art tables together; a plain space reads the same.
    lines = [line.replace("\xa0", " ").rstrip() for line in raw.splitlines()]
    return "\n".join(lines)


def _osis_to_text(osis: str) -> str:
    """Turn one decompressed block of OSIS markup into paragraphs of plain text."""
    text = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)  # footnotes interrupt sentences
    text = re.sub(r"<title\b[^>]*>", "\n\n", text)
    text = text.replace("</title>", "\n\n")
    text = re.sub(r"<chapter\b[^>]*sID[^>]*/>", "\n\n", text)
    text = re.sub(r"<div\b[^>]*[se]ID[^>]*/>", "\n\n", text)
    # Poetry: a line break at the start of each verse line, a paragraph break around line groups.
    text = re.sub(r"<l\b[^>]*eID[^>]*/>|</l>", "", text)
    text = re.sub(r"<(?:l|lb)\b[^>]*/?>", "\n", text)
    text = re.sub(r"<lg\b[^>]*/?>|</lg>", "\n\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def web_text(root: Path) -> str:
    """Return the World English Bible (OT with deuterocanon, then NT) as plain text."""
    parts = []
    for testament in ("ot", "nt"):
        index = (root / WEB_DIR / f"{testament}.bzs").read_bytes()
        blob = (root / WEB_DIR / f"{testament}.bzz").read_bytes()
        for i in range(len(index) // 12):
            offset, size, _ = struct.unpack("<III", index[12 * i : 12 * i + 12])
            block = zlib.decompress(blob[offset : offset + size]).decode("utf-8")
            parts.append(_osis_to_text(block))
    return "\n\n".join(p for p in parts if p)


def chunks(text: str) -> list[str]:
    """Cut text at blank lines into chunks of whole paragraphs of about CHUNK_BYTES."""
    out, cur, size = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        cur.append(para)
        size += len(para.encode("utf-8")) + 2
        if size >= CHUNK_BYTES:
            out.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def split_of(source: str, index: int) -> str:
    """Assign chunk ``index`` of ``source`` to a split by a stable hash."""
    h = int.from_bytes(hashlib.sha256(f"{source}:{index}".encode()).digest()[:4], "big") % 1000
    if h < VALID_PERMILLE:
        return "valid"
    if h < VALID_PERMILLE + TEST_PERMILLE:
        return "test"
    return "train"


def build(root: Path, out: Path) -> dict[str, dict[str, int | str]]:
    """Write train.txt, valid.txt, test.txt under ``out``; return their sizes and sha256."""
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    sources = {"jargon": chunks(jargon_text(root)), "web": chunks(web_text(root))}
    for name, parts in sources.items():
        keep = WEB_KEEP if name == "web" else 1
        for i, part in enumerate(parts):
            if i % keep == 0:
                splits[split_of(name, i)].append(part)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, int | str]] = {}
    for split, parts in splits.items():
        data = ("\n\n".join(parts) + "\n").encode("utf-8")
        (out / f"{split}.txt").write_bytes(data)
        stats[split] = {"bytes": len(data), "chunks": len(parts), "sha256": hashlib.sha256(data).hexdigest()}
    return stats


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="where the Debian packages are unpacked")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corpus")
    args = parser.parse_args()
    print(json.dumps(build(args.root, args.out), indent=2))


if __name__ == "__main__":
    main()
