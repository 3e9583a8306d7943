"""Evaluation protocols of the RSP / AE papers: pointing game, mIoU, model sensitivity, insertion/deletion.

``relprop evaluate`` runs them on VOC 2007, COCO 2014 or ImageNet val and writes ``results.json``
and a report; the pieces are usable on their own (:mod:`.datasets`, :mod:`.metrics`).
"""

from .datasets import COCO2014, VOC2007, DataError, ImageNetVal, Sample, open_dataset

__all__ = ["COCO2014", "DataError", "ImageNetVal", "Sample", "VOC2007", "open_dataset"]
