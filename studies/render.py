"""Rendering a report's sections: Markdown with PNG figures, and a PDF (matplotlib only)."""
import os
import re
import textwrap

from matplotlib.backends.backend_pdf import PdfPages

from training.persistence import atomic_write

from . import figures

REPORT_TITLE = "CIFAR-10: Problem 4 report"


class Section:
    """A report section as blocks that both the Markdown and the PDF writers render."""

    def __init__(self, title):
        """
        Args:
            title: the section's heading.
        """
        self.title, self.blocks = title, []

    def text(self, line):
        self.blocks.append(("text", line))

    def table(self, header, rows):
        self.blocks.append(("table", header, rows))

    def figure(self, filename, fig, caption, in_pdf=True):
        """A figure saved as ``filename`` and shown in report.md, and (unless ``in_pdf`` is False) in the PDF."""
        self.blocks.append(("figure", filename, fig, caption, in_pdf))

    def pdf_page(self, fig):
        """A page of the PDF only (the four curves on one page, where report.md shows four PNGs)."""
        self.blocks.append(("pdf_page", fig))


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _text_table(header, rows, page_width=figures.TEXT_PAGE_COLUMNS):
    """A monospaced table for the PDF; the last column wraps onto continuation lines."""
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    indent = sum(widths) + 2 * len(widths)
    lines = []
    for row in cells:
        last = textwrap.wrap(row[-1], max(page_width - indent, 20)) or [""]
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + last[0])
        lines += [" " * indent + more for more in last[1:]]
    return lines


def write_figures(report_dir, sections):
    """Every section's figures as PNG files in ``report_dir``, each written atomically."""
    for section in sections:
        for block in section.blocks:
            if block[0] == "figure":
                atomic_write(os.path.join(report_dir, block[1]), lambda f: block[2].savefig(f, format="png", dpi=120))


def _heading_anchor(title):
    """The link target of a ``## title`` heading, as GitHub, GitLab and VS Code derive it."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def write_markdown(path, sections, header_lines):
    lines = [f"# {REPORT_TITLE}", ""] + [f"- {line}" for line in header_lines]
    lines += ["", "Contents:", ""] + [f"- [{section.title}]({_heading_anchor(section.title)})" for section in sections]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        for block in section.blocks:
            if block[0] == "text":
                lines += [block[1], ""]
            elif block[0] == "table":
                lines += _markdown_table(*block[1:]) + [""]
            elif block[0] == "figure":  # the caption in view below the picture, not only as its alt text
                lines += [f"![{block[3]}]({block[1]})", "", f"*{block[3]}*", ""]
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))


def write_pdf(path, sections, header_lines):
    atomic_write(path, lambda f: _write_pdf_pages(f, sections, header_lines))


def _write_pdf_pages(file, sections, header_lines):
    """The header page, which lists the page on which each section begins; then each section's text pages and
    figures. Every page carries its number, as a printed report needs."""
    section_pages = [_section_pages(section) for section in sections]
    header_count = len(_paged([(header_lines + _contents(sections, section_pages, first_page=0), None)]))
    contents = _contents(sections, section_pages, first_page=header_count + 1)
    pages = _text_pages(REPORT_TITLE, [(header_lines + contents, None)]) + [page for pages in section_pages
                                                                             for page in pages]
    with PdfPages(file) as pdf:
        for number, page in enumerate(pages, 1):
            mark = page.text(0.985, 0.985, f"{number} / {len(pages)}", ha="right", va="top", fontsize=8, color="0.35")
            pdf.savefig(page)
            mark.remove()  # the figure's PNG, and any other use of it, stay as they were


def _section_pages(section):
    """A section's pages: its text and tables, then its figures. The paragraph just before a table (which says what
    the table holds) stays on its page."""
    blocks, previous = [], None
    for block in section.blocks:
        if block[0] == "text":
            blocks.append((textwrap.wrap(block[1], figures.TEXT_PAGE_COLUMNS), None))
        elif block[0] == "table":
            lines, header_at = _text_table(*block[1:]), 0
            if previous == "text":
                paragraph, _ = blocks.pop()
                lines, header_at = paragraph + [""] + lines, len(paragraph) + 1
            if len(lines[header_at]) > figures.TEXT_PAGE_COLUMNS:  # wrapped over several lines: not repeated
                header_at = None
            blocks.append((lines, header_at))
        previous = block[0]
    pages = _text_pages(section.title, blocks)
    for block in section.blocks:
        if block[0] == "pdf_page":
            pages.append(block[1])
        elif block[0] == "figure" and block[4]:
            pages.append(block[2])
    return pages


def _contents(sections, section_pages, first_page):
    """The header's list of sections, each with the page it begins on (``first_page`` for the first)."""
    lines = ["", "Contents:"]
    for section, pages in zip(sections, section_pages):
        lines.append(f"  page {first_page:>3}  {section.title}")
        first_page += len(pages)
    return lines


def _fitted(lines):
    """``lines`` as a text page shows them: a line wider than a page goes on, indented, below it."""
    fitted = []
    for line in lines:
        fitted += [line] if len(line) <= figures.TEXT_PAGE_COLUMNS else textwrap.wrap(
            line, figures.TEXT_PAGE_COLUMNS, subsequent_indent="    ")
    return fitted


def _paged(blocks, per_page=figures.TEXT_PAGE_LINES):
    """The lines of each text page that ``blocks`` fill, in order, with a blank line between blocks. Each block is
    ``(lines, header_at)``: a paragraph, or a table (which its paragraph may precede) whose header is line
    ``header_at``. A block that does not fit under the blocks before it, but fits on a page of its own, starts the
    next page, so that no table is cut from its header; a longer one fills pages in turn, and once past its table's
    header goes on under that header repeated."""
    pages, page = [], []
    for lines, header_at in blocks:
        if not lines:
            continue
        lines = _fitted(lines)  # a paragraph is wrapped to the page's width already: its table's header keeps its index
        if page and len(page) + 1 + len(lines) > per_page and (len(lines) <= per_page or len(page) + 1 >= per_page):
            pages.append(page)
            page = []
        if page:
            page.append("")
        for index, line in enumerate(lines):
            if len(page) == per_page:
                pages.append(page)
                page = [lines[header_at]] if header_at is not None and index > header_at else []
            page.append(line)
    return pages + [page] if page or not pages else pages


def _text_pages(title, blocks):
    """``blocks`` (as ``_paged`` takes them) on as many text pages as they need, the first titled ``title``."""
    return [figures.text_page(title + (" (continued)" if number else ""), lines)
            for number, lines in enumerate(_paged(blocks))]
