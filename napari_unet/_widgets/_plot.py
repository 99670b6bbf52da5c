"""A small live plot of training loss (per step) and validation IoU (per epoch), painted with QPainter."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_unet.storage.records import RoundRecord

LOSS_COLOUR = QColor(255, 140, 60)
IOU_COLOUR = QColor(80, 200, 255)


def _framed_area(painter: QPainter, widget: QWidget, right: int) -> QRectF:
    """The plotting rectangle of `widget` (room for labels left, `right` px right, and below), framed."""
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    margin = 6
    area = QRectF(margin + 28, margin, widget.width() - 2 * margin - right, widget.height() - 2 * margin - 14)
    painter.setPen(QPen(QColor(128, 128, 128), 1))
    painter.drawRect(area)
    return area


class TrainingPlot(QWidget):
    """Loss on its own auto-scaled axis (left, orange), IoU on 0..1 (right, blue), x = training step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self, total_steps: int = 0) -> None:
        self.total_steps = total_steps
        self.losses: list[tuple[int, float]] = []
        self.ious: list[tuple[int, float]] = []
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        self.losses.append((step, float(loss)))
        self.update()

    def add_iou(self, step: int, iou: float) -> None:
        self.ious.append((step, float(iou)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        area = _framed_area(painter, self, right=56)
        last_step = max([self.total_steps] + [s for s, _ in self.losses] + [s for s, _ in self.ious] + [1])
        text_pen = QPen(QColor(170, 170, 170))
        if self.losses:
            high = max(v for _, v in self.losses) or 1.0
            self._curve(painter, area, self.losses, last_step, 0.0, high, LOSS_COLOUR)
            painter.setPen(text_pen)
            painter.drawText(QRectF(0, area.top() - 2, area.left() - 2, 14), Qt.AlignmentFlag.AlignRight, f"{high:.2g}")
        if self.ious:
            self._curve(painter, area, self.ious, last_step, 0.0, 1.0, IOU_COLOUR, points=True)
        painter.setPen(QPen(LOSS_COLOUR))
        painter.drawText(QRectF(area.left(), area.bottom() + 1, 80, 14), Qt.AlignmentFlag.AlignLeft, "loss")
        painter.setPen(QPen(IOU_COLOUR))
        latest = f"val IoU {self.ious[-1][1]:.2f}" if self.ious else "val IoU"
        painter.drawText(QRectF(area.right() - 120, area.bottom() + 1, 120, 14), Qt.AlignmentFlag.AlignRight, latest)
        painter.setPen(text_pen)
        painter.drawText(QRectF(area.right() + 2, area.top() - 2, 40, 14), Qt.AlignmentFlag.AlignLeft, "1.0")
        painter.end()

    @staticmethod
    def _curve(painter, area: QRectF, values, last_step: int, low: float, high: float, colour: QColor,
               points: bool = False) -> None:
        span = max(high - low, 1e-9)
        polygon = QPolygonF([
            QPointF(area.left() + area.width() * step / last_step,
                    area.bottom() - area.height() * (min(max(value, low), high) - low) / span)
            for step, value in values
        ])
        painter.setPen(QPen(colour, 1.5))
        painter.drawPolyline(polygon)
        if points:
            painter.setBrush(colour)
            for point in polygon:
                painter.drawEllipse(point, 2.5, 2.5)


DICE_COLOUR = QColor(120, 220, 120)


class RoundsPlot(QWidget):
    """IoU (blue) and Dice (green) on the evaluation set, round over round; x = round, 0 = before round 1.

    A rolled-back round is drawn as a hollow marker: its version was scored but is not active.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.points: list[tuple[int, float, float, bool]] = []  # (round, iou, dice, kept)

    def set_rounds(self, rounds: list[RoundRecord]) -> None:
        self.points = []
        if rounds:
            first = rounds[0].eval.before
            self.points.append((0, first["iou"], first["dice"], True))
        for record in rounds:
            after = record.eval.after
            self.points.append((record.round, after["iou"], after["dice"], record.kept))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        area = _framed_area(painter, self, right=40)
        text_pen = QPen(QColor(170, 170, 170))
        painter.setPen(text_pen)
        if not self.points:
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "evaluation scores appear after the first round")
            painter.end()
            return
        last = max(1, self.points[-1][0])
        for column, colour in ((1, IOU_COLOUR), (2, DICE_COLOUR)):
            polygon = QPolygonF([QPointF(area.left() + area.width() * p[0] / last,
                                         area.bottom() - area.height() * min(max(p[column], 0.0), 1.0))
                                 for p in self.points])
            painter.setPen(QPen(colour, 1.5))
            painter.drawPolyline(polygon)
            for point, values in zip(polygon, self.points):
                painter.setBrush(colour if values[3] else Qt.BrushStyle.NoBrush)
                painter.drawEllipse(point, 3.0, 3.0)
        painter.setPen(text_pen)
        painter.drawText(QRectF(0, area.top() - 2, area.left() - 2, 14), Qt.AlignmentFlag.AlignRight, "1.0")
        painter.drawText(QRectF(0, area.bottom() - 12, area.left() - 2, 14), Qt.AlignmentFlag.AlignRight, "0")
        painter.setPen(QPen(IOU_COLOUR))
        latest = self.points[-1]
        painter.drawText(QRectF(area.left(), area.bottom() + 1, 160, 14), Qt.AlignmentFlag.AlignLeft,
                         f"IoU {latest[1]:.3f}")
        painter.setPen(QPen(DICE_COLOUR))
        painter.drawText(QRectF(area.left() + 80, area.bottom() + 1, 160, 14), Qt.AlignmentFlag.AlignLeft,
                         f"Dice {latest[2]:.3f}")
        painter.setPen(text_pen)
        painter.drawText(QRectF(area.right() - 120, area.bottom() + 1, 120, 14), Qt.AlignmentFlag.AlignRight,
                         f"round {latest[0]}")
        painter.end()
