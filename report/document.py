"""A thin layer over reportlab's platypus: headings, paragraphs, tables, matplotlib figures and
the "not run" and "discussion" boxes the report's sections are made of. Text stays selectable."""
import io
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import (Image, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate,
                                Spacer, Table, TableStyle)

from hw3core.figures import plt
from hw3core.files import atomic_path

MARGIN = 1.8 * cm
STYLES = getSampleStyleSheet()
SMALL = ParagraphStyle("small", parent=STYLES["BodyText"], fontSize=8, leading=10)
CELL = ParagraphStyle("cell", parent=STYLES["BodyText"], fontSize=8, leading=9.5)
# a heading never ends a page: it stays with what follows it
HEADINGS = {level: ParagraphStyle(f"heading{level}", parent=STYLES[f"Heading{level}"],
                                  keepWithNext=1) for level in (1, 2)}
BOX = ParagraphStyle("box", parent=STYLES["BodyText"], backColor=colors.HexColor("#f3f3f3"),
                     borderColor=colors.HexColor("#999999"), borderWidth=0.5, borderPadding=6,
                     spaceBefore=6, spaceAfter=10)


class Report:
    def __init__(self, title, note, inputs):
        self.story = [Paragraph(escape(title), STYLES["Title"])]
        if note:
            self.text(note, italic=True)
        self.text("Every number and figure below was computed by this project's code from the "
                  "files listed here; none was typed in. A section whose inputs are missing says "
                  "so and gives the command that produces them.")
        self.table(["input", "file(s)"], inputs, widths=[4 * cm, None])
        self.width = A4[0] - 2 * MARGIN

    def heading(self, text, level=1, new_page=None):
        if new_page if new_page is not None else level == 1:
            self.story.append(PageBreak())
        self.story.append(Paragraph(escape(text), HEADINGS[1 if level == 1 else 2]))

    def text(self, text, italic=False, small=False, keep_with_next=False):
        body = escape(text)
        paragraph = Paragraph(f"<i>{body}</i>" if italic else body,
                              SMALL if small else STYLES["BodyText"])
        paragraph.keepWithNext = keep_with_next
        self.story.append(paragraph)

    def emphasis(self, text):
        self.story.append(Paragraph(f"<b>{escape(text)}</b>", STYLES["BodyText"]))

    def not_run(self, needs, command):
        """The text a section shows instead of numbers it has no input for."""
        self.story.append(Paragraph(
            f"<b>Not run.</b> This section needs {escape(needs)}. Produce it with:<br/>"
            f"<font face='Courier' size='8'>{escape(command)}</font>", BOX))

    def discussion(self, prompt):
        """The marked place where the student writes what the numbers show."""
        self.story.append(KeepTogether([Paragraph(
            f"<b>Discussion (to be written by the student).</b> {escape(prompt)}<br/><br/>",
            BOX)]))

    def table(self, header, rows, widths=None, font_size=8):
        cells = [[Paragraph(f"<b>{escape(str(h))}</b>", CELL) for h in header]]
        cells += [[Paragraph(escape(str(value)), CELL) for value in row] for row in rows]
        if widths is not None and None in widths:
            # the free width shared by how much each column holds: a row label beside ten short
            # numbers would otherwise break after every few letters
            width = getattr(self, "width", A4[0] - 2 * MARGIN)
            free = width - sum(w for w in widths if w is not None)
            # (each cell's padding counted as three characters)
            weights = [3 + min(30, max(len(str(row[i])) for row in [header, *rows]))
                       for i in range(len(header))]
            share = sum(weight for weight, w in zip(weights, widths) if w is None)
            widths = [free * weight / share if w is None else w
                      for weight, w in zip(weights, widths)]
        table = Table(cells, colWidths=widths, repeatRows=1, hAlign="LEFT")
        table.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.3, colors.HexColor("#999999")),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("FONTSIZE", (0, 0), (-1, -1), font_size),
        ]))
        self.story.append(table)
        self.story.append(Spacer(1, 8))

    def figure(self, fig, caption=None, width_share=1.0, max_height=17 * cm, dpi=120):
        """A matplotlib figure as a PNG scaled to the frame (the figure is closed)."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        buffer.seek(0)
        image = Image(buffer)
        scale = min(self.width * width_share / image.imageWidth, max_height / image.imageHeight)
        image.drawWidth, image.drawHeight = image.imageWidth * scale, image.imageHeight * scale
        parts = [image]
        if caption:
            parts.append(Paragraph(escape(caption), SMALL))
        parts.append(Spacer(1, 8))
        self.story.append(KeepTogether(parts))

    def save(self, path):
        """Write the PDF atomically; returns its page count."""
        pages = []

        def count(canvas, doc):
            pages.append(doc.page)
            canvas.saveState()
            canvas.setFont("Helvetica", 8)
            canvas.drawRightString(A4[0] - MARGIN, MARGIN / 2, f"page {doc.page}")
            canvas.restoreState()

        with atomic_path(path) as tmp:
            SimpleDocTemplate(str(tmp), pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN,
                              topMargin=MARGIN, bottomMargin=MARGIN, title="HW3 report",
                              author="report/build.py").build(
                self.story, onFirstPage=count, onLaterPages=count)
        return max(pages)
