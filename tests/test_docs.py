"""The docs as a textbook: every equation label names one equation, each law points at tests that
exist and that its page names, and the repository stands alone (docs/notation.md, docs/properties.md)."""
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
# an equation is numbered where its label opens an indented line: "  (P2)  mu_tilde_t = ..."
DEFINITION = re.compile(r"^\s{2,}\(([A-Z]+)([0-9]+[a-z']*)\)\s", re.M)
# a row's first cell names labels: "(P2)", a list "(W4), (W7)" or a range of one page's "(S4)–(S6)"
LABEL = r"\(([A-Z]+)([0-9]+)([a-z']*)\)"
ROW = re.compile(r"^\| ((?:\([A-Z]+[0-9]+[a-z']*\)(?:–|, )?)+) \|(.*)$", re.M)
SECTION = re.compile(r"^## \[(\w+\.md)\]", re.M)


def definitions():
    """[(page name, label, prefix)] for every numbered equation in docs/."""
    return [(page.name, prefix + number, prefix)
            for page in DOCS for prefix, number in DEFINITION.findall(page.read_text(encoding="utf-8"))]


def properties_sections():
    """{page name: {label: [(test file, test name)]}} from docs/properties.md."""
    text = (ROOT / "docs" / "properties.md").read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in SECTION.finditer(text)] + [(len(text), None)]
    sections = {}
    for (start, page), (end, _) in zip(starts, starts[1:]):
        sections[page] = {}
        for cell, rest in ROW.findall(text[start:end]):
            tests = re.findall(r"`(test_\w+\.py)::(\w+)`", rest)
            sections[page].update({label: tests for label in row_labels(cell)})
    return sections


def row_labels(cell):
    """The labels a row's first cell names: "(W4), (W7)" -> W4, W7; "(S4)–(S6)" -> S4, S5, S6."""
    labels = []
    for part in cell.split(", "):
        ends = re.findall(LABEL, part)
        if len(ends) == 2:
            (prefix, first, _), (_, last, _) = ends
            labels += [f"{prefix}{n}" for n in range(int(first), int(last) + 1)]
        else:
            labels += ["".join(end) for end in ends]
    return labels


def test_row_labels_expand_lists_and_ranges():
    assert row_labels("(P2)") == ["P2"]
    assert row_labels("(M7')") == ["M7'"]
    assert row_labels("(W4), (W7)") == ["W4", "W7"]
    assert row_labels("(S4)–(S6)") == ["S4", "S5", "S6"]


def test_definition_pattern_finds_the_labels_and_not_references():
    text = "  (P2)  mu = a x_0 + b x_t\n(P2) is tested by ...\nsee (P3) below\n    (M7')  y = c\n"
    assert DEFINITION.findall(text) == [("P", "2"), ("M", "7'")]


def test_every_label_names_one_equation_and_every_page_has_its_own_prefix():
    pages_of_label, pages_of_prefix = {}, {}
    for page, label, prefix in definitions():
        pages_of_label.setdefault(label, []).append(page)
        pages_of_prefix.setdefault(prefix, set()).add(page)
    assert pages_of_label, "no equation labels found in docs/"
    defined_twice = {label: pages for label, pages in pages_of_label.items() if len(pages) > 1}
    assert not defined_twice, f"labels defined more than once: {defined_twice}"
    shared = {prefix: sorted(pages) for prefix, pages in pages_of_prefix.items() if len(pages) > 1}
    assert not shared, f"label prefixes used by several pages: {shared}"
    prefixes_of_page = {}
    for page, _, prefix in definitions():
        prefixes_of_page.setdefault(page, set()).add(prefix)
    mixed = {page: sorted(p) for page, p in prefixes_of_page.items() if len(p) > 1}
    assert not mixed, f"pages numbering equations with several prefixes: {mixed}"


def test_every_law_row_names_tests_that_exist_and_that_its_page_names():
    """Each label of a page with a section in docs/properties.md has a row there; each row's tests are
    defined in the test file it names; and the equation's own page names at least one of them."""
    sections = properties_sections()
    labels_of_page = {}
    for page, label, _ in definitions():
        labels_of_page.setdefault(page, set()).add(label)
    for page, rows in sections.items():
        assert (ROOT / "docs" / page).exists(), f"properties.md has a section for a missing page {page}"
        assert labels_of_page.get(page, set()) <= set(rows), \
            f"{page}: labels without a row in properties.md: {sorted(labels_of_page[page] - set(rows))}"
        undefined = sorted(set(rows) - labels_of_page.get(page, set()))
        assert not undefined, f"{page}: properties.md rows for labels the page does not define: {undefined}"
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        for label, tests in rows.items():
            assert tests, f"({label}) has no test in properties.md"
            for file, name in tests:
                source = (ROOT / "tests" / file).read_text(encoding="utf-8")
                assert re.search(rf"^def {name}\(", source, re.M), f"({label}): tests/{file} defines no {name}"
            assert any(name in text for _, name in tests), \
                f"{page} names none of the tests of ({label}): {[name for _, name in tests]}"


def _text_files():
    skip = {".git", ".ci", "mutants", "build", "dist", "runs", "__pycache__", ".hypothesis", ".pytest_cache"}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            try:
                yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary (figures, checkpoints)


# built from pieces so that this file does not match itself
OUTSIDE = re.compile("|".join([r"\bissues? #?[0-9]+", "the issue" + "'s", r"\.\./" + "shared", "shared" + "/seeds"]),
                     re.I)


def test_outside_pattern_catches_what_it_should():
    for bad in ("see issue" + " 4", "Issues" + " #12", "the issue" + "'s targets", ".." + "/shared/DESIGN.md",
                "/work/shared" + "/seeds/x.txt"):
        assert OUTSIDE.search(bad), bad
    assert not OUTSIDE.search("kernels emit 128-bit loads; the tracker of a run")


def test_the_repository_stands_alone():
    """No file points to an issue tracker or to folders outside the repository (CI's own .ci/ aside)."""
    hits = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for rel, text in _text_files() for m in OUTSIDE.finditer(text)]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
