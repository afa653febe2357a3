"""The report's gallery evidence: for the top flagged images, the Grad-CAM heatmap and window that show why.

Computed here (a pipeline step, with the models at hand) so that :mod:`sslguard.report` only draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.cam import best_window, cluster_cam, load_uint8, window_size
from sslguard.data.transforms import to_float
from sslguard.models.backbones import StagedBackbone
from sslguard.report.plots import GalleryItem


def _heatmaps(backbone, dataset, clusters, positions: np.ndarray, detections: dict[str, Any], image_size: int):
    """Grad-CAM heatmaps (of the cluster a detector examined, else the assigned one) for ``positions``."""
    targets = clusters.assignments[positions].copy()
    for r in detections.values():
        t = r.evidence.get("target_cluster")
        if t is not None:
            t = np.asarray(t)[positions]
            targets = np.where(t >= 0, t, targets)
    win = window_size(image_size, 0.25)
    res = cluster_cam(backbone, dataset, clusters.centroids, window=win, positions=positions, targets=targets,
                      keep_heatmaps=True, image_size=image_size, batch_size=64,
                      device=next(backbone.parameters()).device)  # where the pipeline put the encoder
    return res.heatmaps, res.boxes


def _classifier_cam(model, dataset, positions: np.ndarray, image_size: int):
    """Grad-CAM of the classifier's predicted class at its last feature map (Selvaraju et al. 2017) and
    the best window, for ``positions``; ``(None, None)`` when the logits are not ``head(pool(last map))``."""
    bb = model.backbone
    if type(bb).forward is not StagedBackbone.forward:
        return None, None
    imgs = load_uint8(dataset, positions, image_size).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fmap = bb.forward_features(to_float(imgs))
        fmap = fmap.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model.head(bb.pool(fmap))
            picked = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(picked, fmap)
    finally:
        model.train(was_training)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    boxes, _ = best_window(cam, window_size(int(imgs.shape[-1]), 0.25))
    return cam.cpu().numpy(), boxes.cpu().numpy()


def _evidence_box(detections: dict[str, Any], i: int, order: list[str]) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """The evidence box of the first detector (in ``order``) that flagged row ``i`` and has one."""
    for name in order:
        r = detections[name]
        box = r.evidence.get("box")
        if box is not None and bool(r.flagged[i]):
            b = tuple(int(v) for v in np.asarray(box)[i])
            if b[2] > 0 and b[3] > 0:
                return b, name
    return None, None



def gallery_items(top: np.ndarray, *, data, detections: dict[str, Any], fused, backbone, clusters, classifier,
                  classifier_detectors: list[str], image_size: int) -> list[GalleryItem]:
    """One :class:`GalleryItem` per position in ``top`` (the flagged images shown in the report).

    Evidence from the stage that flagged the image: the classifier's Grad-CAM for a classifier-stage flag
    (what drove its label), else the SSL cluster model's Grad-CAM with the detector's own window."""
    heat, cam_boxes, cheat, cboxes = None, None, None, None
    if len(top):
        heat, cam_boxes = _heatmaps(backbone, data.train, clusters, top, detections, image_size)
        if classifier is not None:
            cheat, cboxes = _classifier_cam(classifier, data.train, top, image_size)
    truth, keys, labels = data.truth, data.keys, np.asarray(data.train.labels)
    items = []
    det_order = list(detections)
    for j, i in enumerate(top.tolist()):
        first = next((n for n in det_order if bool(detections[n].flagged[i])), None)
        img = np.asarray(data.train.load_array(i))
        if first in classifier_detectors and cheat is not None:
            hm, box, src = cheat[j], tuple(int(v) for v in cboxes[j]), f"{first}, classifier CAM"
        else:
            box, src = _evidence_box(detections, i, det_order)
            if box is None and cam_boxes is not None:
                box = tuple(int(v) for v in cam_boxes[j])
            src = f"{src or first or 'fused'}, SSL CAM"
            hm = heat[j] if heat is not None else None
        hm = hm if hm is not None and hm.shape == img.shape[:2] else None
        items.append(GalleryItem(int(keys[i]), img, float(fused.scores[i]), src, data.class_name(int(labels[i])),
                                 hm, box, None if truth is None else bool(truth[i])))
    return items
